"""Reference (b): a plain Django view running the model in-process, under uvicorn.

A standalone, minimal Django project in one module: settings.configure, one URL, one
function view that decodes the JSON body, runs the model under torch.inference_mode with
one torch thread and answers JSON. No broker, no batching, no authentication.

    BENCH_MODELS=mlp=/tmp/mlp.pt uvicorn bench.reference_django:application --workers 2 --lifespan off
"""

from __future__ import annotations

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-reference-django-not-a-secret-0123456789abcdef",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        USE_TZ=True,
        DATA_UPLOAD_MAX_MEMORY_SIZE=4 * 1024**2,
    )
    django.setup()

from django.core.asgi import get_asgi_application
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from bench.reference_common import models_load, predict

MODELS = models_load()


def infer(request: HttpRequest, name: str) -> HttpResponse:
    """POST /v2/models/{name}/infer: one forward pass on the request's tensor."""
    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    if name not in MODELS:
        return JsonResponse({"error": f"no model {name!r}"}, status=404)
    try:
        body = predict(MODELS, name, request.body)
    except (ValueError, KeyError, RuntimeError) as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return HttpResponse(body, content_type="application/json")


urlpatterns = [path("v2/models/<str:name>/infer", infer)]

application = get_asgi_application()
