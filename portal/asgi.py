"""ASGI entry point (uvicorn portal.asgi:application).

Django's ASGI handler reads a whole request body (to a temporary file) before any view
or upload handler runs, so an oversized upload would be received in full before it is
refused. The guard below answers 413 from Content-Length before a byte is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodySizeLimit:
    """Refuses HTTP requests whose declared body is larger than `limit` bytes."""

    def __init__(self, app: ASGIApp, limit: int, message: str) -> None:
        self.app = app
        self.limit = limit
        self.body = json.dumps({"error": message, "code": "too_large"}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = dict(scope.get("headers") or []).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.limit:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 413,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"connection", b"close"),
                            (b"content-length", str(len(self.body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": self.body})
                return
        await self.app(scope, receive, send)


class PredictionRouter:
    """Sends /v2 (the Open Inference Protocol) to the prediction gateway, /v1 (OpenAI's API) to
    its app beside the gateway, the rest to Django."""

    def __init__(self, gateway: ASGIApp, django_app: ASGIApp, openai_app: ASGIApp | None = None) -> None:
        self.gateway = gateway
        self.django_app = django_app
        self.openai_app = openai_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/v2" or path.startswith("/v2/")):
            await self.gateway(scope, receive, send)
        elif self.openai_app is not None and scope["type"] == "http" and (path == "/v1" or path.startswith("/v1/")):
            await self.openai_app(scope, receive, send)
        else:
            await self.django_app(scope, receive, send)


def _build() -> ASGIApp:
    get_asgi_application()  # sets Django up
    from portal.concurrency import bounded_asgi_application

    # Django's views (each in a thread holding a database connection) are bounded per process.
    django_app = bounded_asgi_application()
    from django.conf import settings

    from inference.gateway import gateway
    from inference.openai import OpenAIApi
    from registry.uploads import FORM_OVERHEAD_BYTES, too_large_message

    limit = settings.MODEL_UPLOAD_MAX_BYTES + FORM_OVERHEAD_BYTES
    guarded = BodySizeLimit(cast(ASGIApp, django_app), limit, too_large_message(settings.MODEL_UPLOAD_MAX_BYTES))
    return PredictionRouter(gateway, guarded, OpenAIApi(gateway))


application = _build()
