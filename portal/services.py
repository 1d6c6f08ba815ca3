"""Operations on API tokens."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from portal.errors import Conflict, InvalidInput, NotFound
from portal.models import ApiToken, TokenScope

logger = logging.getLogger(__name__)

TOKEN_MARKER = "mp"  # noqa: S105 - the public prefix of every token, not a secret
# How often last_used_at is written: a busy token must not cost a write per request.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def token_create(
    *,
    user: Any,
    name: str,
    scopes: list[str] | None = None,
    expires_at: dt.datetime | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; returns it with the plain value, which is never stored or shown again."""
    name = name.strip()
    if not name:
        raise InvalidInput("A token needs a name.", field="name")
    scopes = scopes if scopes is not None else [TokenScope.READ, TokenScope.PREDICT, TokenScope.WRITE]
    unknown = sorted(set(scopes) - set(TokenScope.values))
    if unknown:
        raise InvalidInput(
            f"Unknown scope(s) {', '.join(unknown)}; use {', '.join(TokenScope.values)}.", field="scopes"
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("The expiry must be in the future.", field="expires_at")
    secret = secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            token = ApiToken.objects.create(
                user=user,
                name=name,
                prefix=secrets.token_hex(ApiToken.PREFIX_LENGTH // 2),
                secret_hash=ApiToken.hash_secret(secret),
                scopes=sorted(set(scopes)),
                expires_at=expires_at,
            )
    except IntegrityError:
        raise Conflict(f"You already have a token named {name!r}.", field="name") from None
    logger.info("token %s created for %s", token.prefix, user)
    return token, f"{TOKEN_MARKER}_{token.prefix}_{secret}"


def token_revoke(*, user: Any, token_id: int) -> ApiToken:
    """Revoke one of the user's tokens; it stops working at once."""
    token = ApiToken.objects.filter(user=user, pk=token_id).first()
    if token is None:
        raise NotFound(f"Token {token_id} not found.")
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def token_authenticate(raw: str) -> ApiToken | None:
    """The active token for a presented value, or None; records when it was last used."""
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_MARKER or len(parts[1]) != ApiToken.PREFIX_LENGTH:
        return None
    token = ApiToken.objects.select_related("user").filter(prefix=parts[1]).first()
    if token is None or not token.secret_matches(parts[2]) or not token.is_active or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
