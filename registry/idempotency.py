"""Idempotency keys: a retried create (model, version upload) answers the first result again.

A client that sends `Idempotency-Key: <key>` and retries after a timeout or a dropped
connection gets the first request's status and body instead of a second model or version.
Keys belong to the caller (two users may use the same key), live in the database (every
web process sees them) and expire after IDEMPOTENCY_KEY_TTL_SECONDS. The same key with a
different request (another body, file or endpoint) is refused with 422; while the first
request is still running, a retry is answered 409. Only successes are remembered: a refused
request created nothing, so retrying it with the same key runs it again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from core.errors import Conflict, InvalidInput, PortalError

HEADER = "Idempotency-Key"
KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
# A first request that never finished (its process died before committing, so it created
# nothing) stops blocking retries of its key after this long.
ABANDONED_AFTER = timedelta(minutes=10)


class IdempotencyKey(models.Model):
    """A key one caller sent: the fingerprint of the first request and, once it succeeded, its answer."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    scope = models.CharField(max_length=200)  # "POST /api/v1/models/iris/versions/", for messages
    fingerprint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)  # None while the first request runs
    response = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        app_label = "registry"
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="registry_idempotency_user_key")]

    def __str__(self) -> str:
        return f"{self.key} ({self.scope})"


class IdempotencyMismatch(PortalError):
    """The key was first used for a different request."""

    status_code = 422
    code = "idempotency_key_reused"


@dataclass(frozen=True)
class Replay:
    """The stored answer of the first request with this key."""

    status_code: int
    body: Any


def request_fingerprint(method: str, path: str, fields: dict[str, Any]) -> str:
    """A digest of what a request asks for (its method, path and fields, files by their sha256)."""
    canonical = json.dumps({"method": method, "path": path, "fields": fields}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotency_begin(user: Any, key: str, fingerprint: str, scope: str) -> IdempotencyKey | Replay:
    """Claim `key` for this request, or return the first request's answer (Replay).

    Raises InvalidInput (a malformed key), IdempotencyMismatch (422: used for another
    request) or Conflict (409: the first request is still running).
    """
    if not KEY_RE.match(key):
        raise InvalidInput(
            f"The {HEADER} header must be 1-255 visible ASCII characters (a UUID is a good key).", field=HEADER
        )
    now = timezone.now()
    IdempotencyKey.objects.filter(created_at__lt=now - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS)).delete()
    for _ in range(2):
        try:
            with transaction.atomic():
                return IdempotencyKey.objects.create(user=user, key=key, scope=scope, fingerprint=fingerprint)
        except IntegrityError:
            existing = IdempotencyKey.objects.filter(user=user, key=key).first()
        if existing is None:
            continue  # abandoned or expired between the insert and the read: claim it again
        if existing.fingerprint != fingerprint:
            raise IdempotencyMismatch(
                f"This {HEADER} was already used for a different request ({existing.scope}, other fields or file); "
                "use a new key for a new request.",
                field=HEADER,
            )
        if existing.status_code is not None:
            return Replay(existing.status_code, existing.response)
        if existing.created_at < now - ABANDONED_AFTER:
            claimed = IdempotencyKey.objects.filter(pk=existing.pk, status_code=None, created_at=existing.created_at)
            if claimed.update(created_at=now):
                existing.created_at = now
                return existing
        raise Conflict(f"A request with this {HEADER} is still being processed; retry once it has finished.")
    raise Conflict(f"A request with this {HEADER} is still being processed; retry once it has finished.")


def idempotency_complete(record: IdempotencyKey, status_code: int, body: Any) -> None:
    """Remember the answer (call inside the transaction that creates the object, so both or neither stay)."""
    IdempotencyKey.objects.filter(pk=record.pk).update(status_code=status_code, response=body)


def idempotency_abandon(record: IdempotencyKey) -> None:
    """Forget a claim whose request failed (it created nothing), so that a retry runs again."""
    IdempotencyKey.objects.filter(pk=record.pk, status_code=None).delete()
