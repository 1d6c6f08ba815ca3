"""Operations on API tokens."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import ApiToken
from core.errors import Conflict, InvalidInput, NotFound
from core.invalidation import serving_invalidate_confirmed
from registry.access import Scope, TokenGrant
from registry.audit import audit_record
from registry.selectors import models_visible_to

logger = logging.getLogger(__name__)

TOKEN_MARKER = "mp"  # noqa: S105 - the public prefix of every token, not a secret
# How often last_used_at is written: a busy token must not cost a write per request.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)
MAX_RATE_LIMIT = 1_000_000
MAX_TOKENS_PER_MINUTE = 1_000_000_000


def token_create(
    *,
    user: Any,
    name: str,
    scopes: list[str] | None = None,
    expires_at: dt.datetime | None = None,
    models: list[str] | None = None,
    rate_limit_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; returns it with the plain value, which is never stored or shown again.

    `models` restricts the token to those models (by name; each must be visible to the user);
    `rate_limit_per_minute` caps its predictions, `tokens_per_minute` the model tokens they use.
    """
    name = name.strip()
    if not name:
        raise InvalidInput("A token needs a name.", field="name")
    scopes = scopes if scopes is not None else [Scope.READ, Scope.PREDICT, Scope.WRITE]
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown:
        raise InvalidInput(f"Unknown scope(s) {', '.join(unknown)}; use {', '.join(Scope.values)}.", field="scopes")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("The expiry must be in the future.", field="expires_at")
    if rate_limit_per_minute is not None and not 1 <= rate_limit_per_minute <= MAX_RATE_LIMIT:
        raise InvalidInput(
            f"rate_limit_per_minute must be between 1 and {MAX_RATE_LIMIT} (or left out for no limit).",
            field="rate_limit_per_minute",
        )
    if tokens_per_minute is not None and not 1 <= tokens_per_minute <= MAX_TOKENS_PER_MINUTE:
        raise InvalidInput(
            f"tokens_per_minute must be between 1 and {MAX_TOKENS_PER_MINUTE} (or left out for no limit).",
            field="tokens_per_minute",
        )
    allowed = _models_for_token(user, models or [])
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
                rate_limit_per_minute=rate_limit_per_minute,
                tokens_per_minute=tokens_per_minute,
            )
            token.allowed_models.set(allowed)
            audit_record(
                user,
                "token.create",
                model=None,
                object_type="token",
                object_repr=str(token),
                after={
                    "scopes": token.scopes,
                    "models": sorted(model.name for model in allowed),
                    "expires_at": expires_at.isoformat() if expires_at else None,
                    "rate_limit_per_minute": rate_limit_per_minute,
                    "tokens_per_minute": tokens_per_minute,
                },
            )
    except IntegrityError:
        raise Conflict(f"You already have a token named {name!r}.", field="name") from None
    logger.info("token %s created for %s", token.prefix, user)
    return token, f"{TOKEN_MARKER}_{token.prefix}_{secret}"


def _models_for_token(user: Any, names: list[str]) -> list[Any]:
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise InvalidInput("models must be a list of model names.", field="models")
    found = list(models_visible_to(user).filter(name__in=set(names)))
    missing = sorted(set(names) - {model.name for model in found})
    if missing:
        raise InvalidInput(f"Unknown model(s) {', '.join(missing)}.", field="models")
    return found


def token_revoke(*, user: Any | None, token_id: int, actor: Any = None) -> ApiToken:
    """Revoke a token; once this returns, no gateway process accepts it any more.

    `user` owns the token (None: any user's, for admins); `actor` (default: the owner) is
    who revokes it.
    The revocation commits, then every gateway process is told and confirms that it
    dropped its cached copy (see core.invalidation.serving_invalidate_confirmed).
    """
    token = ApiToken.objects.filter(pk=token_id, **({} if user is None else {"user": user})).first()
    if token is None:
        raise NotFound(f"Token {token_id} not found.")
    if token.revoked_at is None:
        with transaction.atomic():
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            audit_record(
                actor or user,
                "token.revoke",
                model=None,
                object_type="token",
                object_repr=str(token),
                before={"state": "active"},
                after={"state": "revoked"},
            )
        transaction.on_commit(lambda: serving_invalidate_confirmed(f"ApiToken:{token.pk}"))
    return token


def token_authenticate(raw: str) -> ApiToken | None:
    """The active token for a presented value, or None; records when it was last used."""
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_MARKER or len(parts[1]) != ApiToken.PREFIX_LENGTH:
        return None
    token = ApiToken.objects.select_related("user").filter(prefix=parts[1]).first()
    if token is None or not token.secret_matches(parts[2]) or not token.is_active or not token.user.is_active:
        return None
    model_ids = frozenset(token.allowed_models.values_list("pk", flat=True))
    # Whatever the user does through this request is checked against the token too.
    token.user.api_grant = TokenGrant(  # type: ignore[attr-defined]
        token_id=token.pk,
        scopes=frozenset(token.scopes),
        model_ids=model_ids or None,
        rate_limit_per_minute=token.rate_limit_per_minute,
        tokens_per_minute=token.tokens_per_minute,
    )
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
