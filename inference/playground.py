"""The chat playground's server side: a signed-in person chats with a text-generation version.

`POST /playground/<model>/<version>/chat/` (session and CSRF, like every form of the portal)
takes `{"messages": [...], "temperature", "max_tokens", "top_p"}` and streams exactly the
server-sent events /v1/chat/completions streams, ending with `data: [DONE]`. It runs the same
`GenerationRun` as /v1 (the gateway's route cache, `guard.authorize`, the generation client,
telemetry under source `native`), for the person instead of an API token. Refusals before the
stream starts are JSON `{"error": {"message", "type", "code"}}` with their status.
"""

from __future__ import annotations

import orjson
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_POST

from core.errors import PortalError
from inference.gateway import HttpError, gateway
from inference.openai import SSE_HEADERS, GenerationRun
from inference.openai_generation import OpenAIError, chat_request, error_document

PLAYGROUND_FIELDS = frozenset({"messages", "temperature", "max_tokens", "top_p"})


def _error(status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> JsonResponse:
    return JsonResponse(error_document(status, message, param), status=status, headers=headers)


@require_POST
async def playground_chat(request: HttpRequest, name: str, version: int) -> HttpResponseBase:
    """Stream a chat answer of model `name` v`version` for the signed-in person."""
    user = await request.auser()
    if not user.is_authenticated:
        return _error(401, "Sign in to use the playground.")
    try:
        raw = orjson.loads(request.body)
        if not isinstance(raw, dict):
            raise OpenAIError("The request body must be a JSON object.", None)
        unknown = sorted(set(raw) - PLAYGROUND_FIELDS)
        if unknown:
            raise OpenAIError(f"Unrecognized field: {', '.join(unknown)} (the playground takes "
                              f"{', '.join(sorted(PLAYGROUND_FIELDS))}).", unknown[0])  # fmt: skip
        call = chat_request({**raw, "model": f"{name}:{version}", "stream": True})
        run = GenerationRun(gateway, user, call, source="native", payload=len(request.body))
        await run.start()
    except orjson.JSONDecodeError as exc:
        return _error(400, f"The request body is not valid JSON: {exc}")
    except HttpError as exc:
        return _error(exc.status, exc.message, headers=exc.headers)
    except PortalError as exc:
        return _error(exc.status_code, exc.message, exc.field, getattr(exc, "headers", None))
    return StreamingHttpResponse(run.stream(), headers=SSE_HEADERS)


__all__ = ["playground_chat"]
