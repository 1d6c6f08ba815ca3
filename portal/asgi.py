"""ASGI entry point (uvicorn portal.asgi:application).

/v2 goes to the prediction gateway, /v1 to the OpenAI-compatible API, the friendly predict
endpoint's token callers to its event-loop path (inference.api.predict_asgi, which hands what
it does not take to Django), the rest to Django behind core.bodies.BodyLimit: Django's ASGI
handler reads a whole request body before any view runs, so an oversized one is refused from
its Content-Length before a byte is read, and a chunked one is counted as it streams (see
core/bodies.py).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

from django.core.asgi import get_asgi_application

from core.bodies import BodyLimit
from core.startup import startup_objects_frozen

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class PredictionRouter:
    """Sends /v2 (the Open Inference Protocol) to the prediction gateway, /v1 (OpenAI's API) to
    its app beside the gateway, the rest to Django."""

    def __init__(
        self, gateway: ASGIApp, django_app: ASGIApp, openai_app: ASGIApp | None = None,
        predict_app: ASGIApp | None = None,
    ) -> None:  # fmt: skip
        self.gateway = gateway
        self.django_app = django_app
        self.openai_app = openai_app
        self.predict_app = predict_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/v2" or path.startswith("/v2/")):
            await self.gateway(scope, receive, send)
        elif self.openai_app is not None and scope["type"] == "http" and (path == "/v1" or path.startswith("/v1/")):
            await self.openai_app(scope, receive, send)
        elif self.predict_app is not None and _predict_path(scope):
            await self.predict_app(scope, receive, send)
        else:
            await self.django_app(scope, receive, send)


def _predict_path(scope: Scope) -> bool:
    """POST /api/v1/models/<name>/predict/ (the predict app hands what it does not take to Django)."""
    path = scope.get("path", "")
    return scope["type"] == "http" and path.startswith("/api/v1/models/") and path.endswith("/predict/")


def _build() -> ASGIApp:
    get_asgi_application()  # sets Django up
    from portal.concurrency import bounded_asgi_application

    # Django's views (each in a thread holding a database connection) are bounded per process.
    django_app = bounded_asgi_application()
    from django.conf import settings

    from inference.api.predict_asgi import PredictASGI
    from inference.gateway import gateway
    from inference.openai import OpenAIApi
    from registry.uploads import FORM_OVERHEAD_BYTES, too_large_message

    limit = settings.MODEL_UPLOAD_MAX_BYTES + FORM_OVERHEAD_BYTES
    guarded = BodyLimit(cast(ASGIApp, django_app), limit, too_large_message(settings.MODEL_UPLOAD_MAX_BYTES))
    application = PredictionRouter(gateway, guarded, OpenAIApi(gateway), PredictASGI(gateway, guarded))
    startup_objects_frozen()
    return application


application = _build()
