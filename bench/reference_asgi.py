"""Reference (c): a minimal raw ASGI app (no framework) running the model in-process.

The forward pass runs inline on the event loop: with one torch thread and no batching,
that is the fastest a single process can answer, and it is what the portal is measured
against.

    BENCH_MODELS=mlp=/tmp/mlp.pt uvicorn bench.reference_asgi:application --workers 2 --lifespan off
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bench.reference_common import model_from_path, models_load, predict

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MODELS = models_load()


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    """POST /v2/models/{name}/infer: one forward pass on the request's tensor."""
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    name = model_from_path(scope["path"], MODELS)
    if name is None or scope["method"] != "POST":
        status, body = 404, json.dumps({"error": f"no endpoint {scope['method']} {scope['path']}"}).encode()
    else:
        try:
            status, body = 200, predict(MODELS, name, b"".join(chunks))
        except (ValueError, KeyError, RuntimeError) as exc:
            status, body = 400, json.dumps({"error": str(exc)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
