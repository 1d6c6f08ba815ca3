"""Reference (c'): the same in-process model behind Starlette, the framework the issue names.

BENCH_MODELS=mlp=/tmp/mlp.pt uvicorn bench.reference_starlette:application --workers 2 --lifespan off
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.reference_common import models_load, predict

MODELS = models_load()


async def infer(request: Request) -> Response:
    """POST /v2/models/{name}/infer: one forward pass on the request's tensor."""
    name = request.path_params["name"]
    if name not in MODELS:
        return Response(json.dumps({"error": f"no model {name}"}), status_code=404, media_type="application/json")
    try:
        body = predict(MODELS, name, await request.body())
    except (ValueError, KeyError, RuntimeError) as exc:
        return Response(json.dumps({"error": str(exc)}), status_code=400, media_type="application/json")
    return Response(body, media_type="application/json")


application = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
