"""Idempotency-Key on the REST creates: claim the key, replay a remembered answer, or run the create."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from rest_framework.request import Request
from rest_framework.response import Response

from registry.artifacts import sha256_of
from registry.idempotency import (
    HEADER,
    IdempotencyKey,
    Replay,
    idempotency_abandon,
    idempotency_begin,
    idempotency_complete,
    request_fingerprint,
)

# What a create calls with the object's answer once it exists (inside its transaction).
Remember = Callable[[int, Any], None]


def _fields(request: Request) -> dict[str, Any]:
    data: Any = request.data
    if hasattr(data, "lists"):  # a form: each field may repeat
        return {key: [_field_value(item) for item in values] for key, values in data.lists()}
    return dict(data) if isinstance(data, dict) else {"body": data}


def _field_value(value: Any) -> Any:
    if isinstance(value, UploadedFile):
        digest = getattr(value, "sha256", None)
        if digest is None:
            value.seek(0)
            digest = sha256_of(value)
            value.seek(0)
        return {"file": value.name, "size": value.size, "sha256": digest}
    return value


def idempotent(request: Request, create: Callable[[Remember], Response]) -> Response:
    """Run `create` once per Idempotency-Key (when the request carries one).

    `create(remember)` must call `remember(status, body)` inside the transaction that
    creates the object. A retry with the same key and request gets the remembered answer
    (with `Idempotency-Replayed: true`); a failed create forgets the key.
    """
    key = request.headers.get(HEADER)
    if key is None:
        return create(lambda status, body: None)
    fingerprint = request_fingerprint(request.method or "", request.path, _fields(request))
    claimed = idempotency_begin(request.user, key, fingerprint, f"{request.method} {request.path}")
    if isinstance(claimed, Replay):
        return Response(claimed.body, status=claimed.status_code, headers={"Idempotency-Replayed": "true"})
    record: IdempotencyKey = claimed
    try:
        return create(lambda status, body: idempotency_complete(record, status, body))
    except BaseException:
        idempotency_abandon(record)
        raise
