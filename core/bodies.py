"""Request bodies bound for Django, limited before Django reads them (an ASGI wrapper).

Django's ASGI handler reads a whole body (to a temporary file) before any view or upload
handler runs, so a limit checked in a view comes after the bytes were received; and
Django and DRF read only what Content-Length declares, so a `Transfer-Encoding: chunked`
body was taken as empty (a chunked JSON create answered "name: This field is required")
and had no limit at all. `BodyLimit` stands in front of Django:

- a declared Content-Length over the limit is refused 413 before a byte is read (and the
  connection closed, so the client's unread body goes with it);
- a chunked body is read here, counted as it streams and refused 413 the moment it passes
  the limit; under it, it goes on to Django with its Content-Length, parsed like any other;
- a chunked multipart body (an upload: up to gigabytes, streamed to disk by
  registry.uploads) is refused 411: uploads must say their length.

The limits: multipart/form-data bodies (uploads) `upload_limit`; any other body
DATA_UPLOAD_MAX_MEMORY_SIZE, Django's own limit for non-file bodies and the JSON parser's.
The /v2 and /v1 apps read their bodies themselves, with the same counting (inference.gateway).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _ClientGone(Exception):
    """The client left before its chunked body ended."""


class BodyLimit:
    """Refuses or frames Django's request bodies (see the module docstring)."""

    def __init__(self, app: ASGIApp, upload_limit: int, upload_message: str) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.upload_message = upload_message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: bytes | None = None
        chunked = upload = False
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                declared = value
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-type":
                upload = value.split(b";", 1)[0].strip().lower() == b"multipart/form-data"
        limit, message = self._limit(upload)
        if declared is not None:
            if declared.strip().isdigit() and int(declared) > limit:
                await _refuse(send, 413, message, "too_large")
                return
            await self.app(scope, receive, send)
            return
        if not chunked:
            await self.app(scope, receive, send)
            return
        if upload:
            await _refuse(send, 411, "A chunked upload cannot be taken: send the file with its Content-Length "
                          "(curl -F and every HTTP client do for a file).", "length_required")  # fmt: skip
            return
        try:
            body = await _read(receive, limit)
        except _ClientGone:
            return  # nobody to answer
        if body is None:
            await _refuse(send, 413, message, "too_large")
            return
        await self.app(_framed(scope, len(body)), _replay(body, receive), send)

    def _limit(self, upload: bool) -> tuple[int, str]:
        if upload:
            return self.upload_limit, self.upload_message
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return limit, f"The request body is larger than the limit of {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)."


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _framed(scope: Scope, length: int) -> Scope:
    """The scope with the body's Content-Length in place of its chunked framing."""
    headers = [(name, value) for name, value in scope.get("headers") or () if name != b"transfer-encoding"]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body read here first, then whatever the server sends (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _refuse(send: Send, status: int, message: str, code: str) -> None:
    body = json.dumps({"error": message, "code": code}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"connection", b"close"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
