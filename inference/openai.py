"""The OpenAI-compatible API (/v1) of the data plane: embeddings and the model list.

It lives beside the /v2 gateway and goes through the same steps as a /v2 request, so the
same rules hold: the caller from the gateway's token cache, the route from its route cache,
`guard.authorize` (roles, visibility, token scopes and model lists), `guard.rate_limit` and
`guard.tokens_check` / `tokens_charge` (requests and model tokens per minute),
the version's coalescer to the workers, and a `telemetry.Sample` per prediction. Only the
shapes differ: OpenAI's requests, answers and errors (`{"error": {"message", "type",
"param", "code"}}`), so the official `openai` client works unchanged.

Addressing a model: `model` is a model name (its `production` alias), `name:alias` (any
alias) or `name:3` (version 3). Model and alias names cannot hold a colon, so this is never
ambiguous.

The shaping of requests and answers are pure functions (`embeddings_request`,
`embeddings_response`, `error_document`, ...); `OpenAIApi` is the ASGI app.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from asgiref.sync import sync_to_async

from core.errors import InvalidInput, NotFound, PortalError, TooManyRequests
from inference import guard, telemetry, text
from inference.gateway import AUTH_REQUIRED, Gateway, HttpError, Receive, Scope, Send, read_body, respond
from inference.routes import Target
from registry import access, selectors
from registry.access import Action
from registry.models import ModelAlias, ModelFormat, RegisteredModel, VersionStatus, Visibility
from registry.text_tasks import TEXT_INPUT, TextTask

logger = logging.getLogger(__name__)

SEPARATOR = ":"
ENCODING_FORMATS = ("float", "base64")
EMBEDDINGS_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
MODEL_PATH = re.compile(r"^/v1/models/(?P<id>[^/]+)/?$")
JSON_HEADERS = {"Content-Type": "application/json"}
# OpenAI's error types and codes per HTTP status (its client picks the exception by status).
ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "requests"}
ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large", 429: "rate_limit_exceeded"}


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A checked POST /v1/embeddings body."""

    model: str
    texts: list[str]
    encoding_format: str
    dimensions: int | None


class OpenAIError(InvalidInput):
    """A 400 about one field of an OpenAI request (`param` in the error document)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message, field=param)


# --- pure shaping -------------------------------------------------------------------------------


def model_address(model: str) -> tuple[str, str | None]:
    """`name` → (name, None: production), `name:alias` → (name, alias), `name:3` → (name, "3")."""
    name, separator, version = model.partition(SEPARATOR)
    if not name or (separator and not version) or SEPARATOR in version:
        raise OpenAIError(
            f"model {model!r} is not a model address: use 'name', 'name:alias' or 'name:<version number>'.", "model"
        )
    return name, version if separator else None


def model_id(name: str, alias_or_version: str | None) -> str:
    """The /v1 id of a model as addressed (the inverse of model_address)."""
    return name if alias_or_version in (None, "production") else f"{name}{SEPARATOR}{alias_or_version}"


def embeddings_request(raw: Any) -> EmbeddingsRequest:
    """Check an embeddings body: `model`, `input` (a text or a list of texts), `encoding_format`, `dimensions`."""
    if not isinstance(raw, dict):
        raise OpenAIError("The request body must be a JSON object.", None)
    unknown = sorted(set(raw) - EMBEDDINGS_FIELDS)
    if unknown:
        raise OpenAIError(f"Unrecognized request argument supplied: {', '.join(unknown)}.", unknown[0])
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError("You must provide a model parameter (a model name, 'name:alias' or 'name:3').", "model")
    if "input" not in raw:
        raise OpenAIError("You must provide an input parameter: a text or a list of texts.", "input")
    items = raw["input"]
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        if isinstance(items, list) and items and all(_is_token_ids(item) for item in items):
            raise OpenAIError("input as token ids is not supported: send the text (a string or a list of them).",
                              "input")  # fmt: skip
        raise OpenAIError("input must be a string or a list of strings.", "input")
    texts = text.texts_check(items, "input")
    encoding_format = raw.get("encoding_format") or "float"
    if encoding_format not in ENCODING_FORMATS:
        raise OpenAIError(
            f"encoding_format {encoding_format!r} is not supported; use one of {', '.join(ENCODING_FORMATS)}.",
            "encoding_format",
        )
    dimensions = raw.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
        raise OpenAIError(f"dimensions must be a positive integer, got {dimensions!r}.", "dimensions")
    return EmbeddingsRequest(model, texts, encoding_format, dimensions)


def _is_token_ids(item: Any) -> bool:
    """An int, or a list of ints: OpenAI's pre-tokenized input."""
    return type(item) is int or (isinstance(item, list) and all(type(token) is int for token in item))


def embeddings_check(target: Target, request: EmbeddingsRequest) -> None:
    """The addressed version computes embeddings, of the requested size."""
    if target.task != TextTask.FEATURE_EXTRACTION:
        kind = f"a {target.task} model" if target.task else f"a {target.format} (tensor) model"
        raise OpenAIError(
            f"model {request.model!r} is {kind}; /v1/embeddings needs a feature-extraction (embeddings) model.",
            "model",
        )
    size = embedding_size(target)
    if request.dimensions is not None and size is not None and request.dimensions != size:
        raise OpenAIError(
            f"model {request.model!r} answers embeddings of {size} dimensions; dimensions={request.dimensions} "
            "cannot be served (leave it out, or give its size).",
            "dimensions",
        )


def embedding_size(target: Target) -> int | None:
    """The length of a version's embeddings (from its signature), None if not declared."""
    for spec in target.signature.get("outputs", []):
        if spec["name"] == "embedding":
            size = spec["shape"][-1]
            return int(size) if size > 0 else None
    return None


def embedding_encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """One embedding as OpenAI sends it: floats, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return np.asarray(vector, dtype=np.float32).tolist()


def embeddings_response(model: str, vectors: np.ndarray, tokens: int, encoding_format: str) -> dict[str, Any]:
    """The body of an embeddings answer (`usage` counts the tokens the model read)."""
    data = [
        {"object": "embedding", "index": index, "embedding": embedding_encode(vector, encoding_format)}
        for index, vector in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def model_card(identifier: str, created: int, owned_by: str) -> dict[str, Any]:
    """One entry of GET /v1/models."""
    return {"id": identifier, "object": "model", "created": created, "owned_by": owned_by}


def error_document(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An error as OpenAI answers one."""
    kind = ERROR_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code or ERROR_CODES.get(status)}}


# --- lookups (run in threads: they query the database) -----------------------------------------


def models_usable(user: Any) -> list[dict[str, Any]]:
    """Text models the caller may predict with, one entry per alias of a ready version."""
    if user.is_authenticated:
        candidates = selectors.models_visible_to(user)
    else:
        candidates = RegisteredModel.objects.filter(visibility=Visibility.PUBLIC)
    aliases = (
        ModelAlias.objects.filter(
            model__in=candidates, version__format=ModelFormat.HUGGINGFACE, version__status=VersionStatus.READY
        )
        .select_related("model__owner", "version")
        .order_by("model__name", "name")
    )
    cards, permitted = [], {}
    for alias in aliases:
        model = alias.model
        if model.pk not in permitted:
            permitted[model.pk] = access.model_permits(user, model, Action.PREDICT)
        if permitted[model.pk]:
            created = int(alias.version.created_at.timestamp())
            cards.append(model_card(model_id(model.name, alias.name), created, model.owner.get_username()))
    return cards


def model_retrieve(user: Any, identifier: str) -> dict[str, Any]:
    """GET /v1/models/{id}: a text model version the caller may predict with."""
    name, addressed = model_address(identifier)
    number, alias = (addressed, None) if addressed and addressed.isdigit() else (None, addressed)
    found = selectors.version_resolve(user, name, version=number, alias=alias, action=Action.PREDICT)
    if found.format != ModelFormat.HUGGINGFACE:
        raise NotFound(f"The model {identifier!r} is a {found.format} (tensor) model; /v1 serves text models.")
    return model_card(identifier, int(found.created_at.timestamp()), found.model.owner.get_username())


# --- the ASGI app -------------------------------------------------------------------------------


class OpenAIApi:
    """/v1 over the gateway's caches, guard, coalescers and telemetry."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = JSON_HEADERS
        try:
            status, document = await self.route(scope, receive)
        except HttpError as exc:
            status, document = exc.status, error_document(exc.status, exc.message)
        except PortalError as exc:
            document = error_document(exc.status_code, exc.message, exc.field)
            if isinstance(exc, TooManyRequests):
                # OpenAI names the limit that ran out in the type: requests or tokens (per minute).
                document["error"]["type"] = exc.limit
            status, headers = exc.status_code, {**JSON_HEADERS, **getattr(exc, "headers", {})}
        except Exception:
            logger.exception("OpenAI API error")
            status, document = 500, error_document(500, "Internal error in the prediction gateway.")
        await respond(send, status, orjson.dumps(document), headers)

    async def route(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        path, method = scope["path"], scope["method"]
        headers = dict(scope.get("headers") or [])
        if path.rstrip("/") == "/v1/embeddings":
            if method != "POST":
                raise HttpError(405, f"Method {method} is not allowed on {path}; POST an embeddings request.")
            return 200, await self.embeddings(headers, receive)
        if path.rstrip("/") == "/v1/models" and method == "GET":
            user = await self.gateway.user(headers)
            return 200, {"object": "list", "data": await sync_to_async(models_usable, thread_sensitive=False)(user)}
        match = MODEL_PATH.match(path)
        if match is not None and method == "GET":
            user = await self.gateway.user(headers)
            try:
                return 200, await sync_to_async(model_retrieve, thread_sensitive=False)(user, match["id"])
            except NotFound:
                if not user.is_authenticated:
                    raise HttpError(401, AUTH_REQUIRED) from None
                raise
        message = f"Invalid URL ({method} {path}): this portal's /v1 serves /v1/embeddings and /v1/models."
        return 404, error_document(404, message, code="unknown_url")

    async def embeddings(self, headers: dict[bytes, bytes], receive: Receive) -> dict[str, Any]:
        user = await self.gateway.user(headers)
        body = await read_body(headers, receive)
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise OpenAIError(f"The request body is not valid JSON: {exc}", None) from None
        request = embeddings_request(raw)
        name, addressed = model_address(request.model)
        target = await self.gateway.target(user, name, addressed)
        guard.authorize(user, target, Action.PREDICT)
        sample = telemetry.Sample(target.version_id, target.model_name, target.version, addressed, source="v1")
        sample.payload = len(body)
        sample.caller(user)
        client = self.gateway.connection()
        try:
            await guard.rate_limit(client, user)
            await guard.tokens_check(client, user)
            embeddings_check(target, request)
            tensors = {TEXT_INPUT: text.texts_tensor(request.texts)}
            # OpenAI's embeddings are unit length, and a text over the model's maximum is refused.
            answer, reply = await self.gateway.submit(target, tensors, {"truncate": False, "normalize": True})
            sample.timing = {"qt": reply.queue_ms, "ct": reply.compute_ms, "bs": reply.batch_rows}
            # The worker read these tokens whatever happens next: they are charged and metered.
            sample.prompt_tokens = text.usage_tokens(answer.tensors)
            await guard.tokens_charge(client, user, sample.tokens)
            vectors = answer.tensors["embedding"]
            if request.dimensions is not None and request.dimensions != vectors.shape[-1]:
                raise OpenAIError(f"model {request.model!r} answers embeddings of {vectors.shape[-1]} dimensions, "
                                  f"not {request.dimensions}.", "dimensions")  # fmt: skip
            document = embeddings_response(request.model, vectors, sample.prompt_tokens, request.encoding_format)
        except Exception as exc:
            sample.failed(exc)
            raise
        sample.done(200)
        return document


__all__ = [
    "EmbeddingsRequest",
    "OpenAIApi",
    "OpenAIError",
    "embedding_encode",
    "embedding_size",
    "embeddings_check",
    "embeddings_request",
    "embeddings_response",
    "error_document",
    "model_address",
    "model_card",
    "model_id",
    "model_retrieve",
    "models_usable",
]
