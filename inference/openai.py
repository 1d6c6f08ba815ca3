"""The OpenAI-compatible API (/v1) of the data plane: completions, chat completions, embeddings
and the model list.

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

Completions and chat completions go to the generation engines through the gateway's
generation client (inference.generation.client) instead of a coalescer; `GenerationRun` is
one such request with its limits, telemetry and token charges, shared with the playground
(inference.playground). Their shaping lives in inference.openai_generation.

The shaping of requests and answers are pure functions (`embeddings_request`,
`embeddings_response`, `error_document`, ...); `OpenAIApi` is the ASGI app.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson
from asgiref.sync import sync_to_async

from core import hygiene
from core.errors import NotFound, PortalError, TooManyRequests
from inference import admission, guard, telemetry, text
from inference.gateway import AUTH_REQUIRED, Gateway, HttpError, Receive, Scope, Send, read_body, respond
from inference.generation.client import Generation
from inference.generation.messages import Output
from inference.openai_generation import (
    SSE_DONE,
    GenerationCall,
    OpenAIError,
    Shaper,
    chat_request,
    completion_request,
    error_document,
    generation_params,
    sse,
)
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
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
GENERATION_PATHS = {"/v1/completions": completion_request, "/v1/chat/completions": chat_request}
# Each endpoint's method and the media types its answers may take (Accept); bodies are JSON.
JSON_ONLY = (hygiene.JSON,)
ENDPOINTS = {
    "/v1/completions": ("POST", (hygiene.JSON, "text/event-stream")),
    "/v1/chat/completions": ("POST", (hygiene.JSON, "text/event-stream")),
    "/v1/embeddings": ("POST", JSON_ONLY),
    "/v1/models": ("GET", JSON_ONLY),
}
# A client that leaves is answered with this status in the serving metrics (nginx's "client closed").
CLIENT_CLOSED = 499
T = TypeVar("T")


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A checked POST /v1/embeddings body."""

    model: str
    texts: list[str]
    encoding_format: str
    dimensions: int | None


# --- pure shaping -------------------------------------------------------------------------------


def model_address(model: str) -> tuple[str, str | None]:
    """`name` → (name, None: production), `name:alias` → (name, alias), `name:3` → (name, "3").

    A name, alias or number that cannot exist is refused here (400), before any lookup.
    """
    name, separator, version = model.partition(SEPARATOR)
    if not name or (separator and not version) or SEPARATOR in version:
        raise OpenAIError(
            f"model {model[:80]!r} is not a model address: use 'name', 'name:alias' or 'name:<version number>'.",
            "model",
        )
    try:
        selectors.address_checked(name, version if separator else None)
    except PortalError as exc:
        raise OpenAIError(exc.message, "model") from None
    return name, version if separator else None


def request_checked(scope: Scope, headers: dict[bytes, bytes]) -> str:
    """The rules every /v1 request meets before authentication (core.hygiene, as /v2): host, path,
    method (405 with Allow), Content-Type of a body (415) and Accept (406). Returns the path
    without its trailing slash; an unknown one is answered 404 by the router."""
    hygiene.host_checked(headers, scope.get("server"))
    hygiene.path_checked(scope["path"])
    path = scope["path"].rstrip("/")
    endpoint = ENDPOINTS.get(path) or (("GET", JSON_ONLY) if MODEL_PATH.match(scope["path"]) else None)
    if endpoint is not None:
        method, offered = endpoint
        hygiene.method_checked(scope["method"], (method,), scope["path"])
        if method == "POST":
            hygiene.content_type_checked(headers, JSON_ONLY)
        hygiene.accept_checked(headers, offered)
    return path


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


# --- generation: one request through the gateway ------------------------------------------------


class GenerationRun:
    """One completions or chat request: access, limits, the engines, telemetry and token charges.

    `start()` raises (HttpError, PortalError) before anything is answered; then `stream()`
    (server-sent events) or `document()` (the whole answer). Whatever ends it (the last token,
    an error, the caller leaving), `finish` runs once: the request is cancelled on its worker
    if it still runs, the tokens read and generated are charged, and the sample is recorded.
    """

    def __init__(self, gateway: Gateway, user: Any, call: GenerationCall, *, source: str, payload: int = 0) -> None:
        self.gateway = gateway
        self.user = user
        self.call = call
        self.source = source
        self.payload = payload
        self.shaper = Shaper(call)
        self.sample: telemetry.Sample | None = None
        self.generation: Generation | None = None
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.gaps: list[float] = []
        self.ended = False

    @property
    def prompt_tokens(self) -> int:
        accepted = self.generation.accepted if self.generation is not None else None
        return accepted.prompt_tokens if accepted is not None else 0

    async def start(self) -> None:
        name, addressed = model_address(self.call.model)
        target = await self.gateway.target(self.user, name, addressed)
        guard.authorize(self.user, target, Action.PREDICT)
        sample = telemetry.Sample(target.version_id, target.model_name, target.version, addressed, source=self.source)
        sample.payload = self.payload
        sample.caller(self.user)
        self.sample = sample
        try:
            params = generation_params(target, self.call)
            if target.status != VersionStatus.READY:
                raise HttpError(
                    503, f"Model {target.model_name!r} v{target.version} is {target.status}, not ready to serve."
                )
            client = self.gateway.connection()
            await guard.rate_limit(client, self.user)
            await guard.tokens_check(client, self.user)
            self.generation = await self.gateway.generation.submit(
                target, prompt=self.call.prompt, messages=self.call.messages, params=params
            )
            accepted = self.generation.accepted
            sample.timing = {"qt": accepted.queue_ms if accepted is not None else 0.0}
        except BaseException as exc:
            await self.finish(exc)
            raise

    async def outputs(self) -> AsyncIterator[Output]:
        """The generation's outputs, timed as this gateway sees them (first text, gaps between texts)."""
        assert self.generation is not None, "start() first"
        async for output in self.generation.outputs():
            if output.text:
                now = time.perf_counter()
                if self.last_at is not None:
                    self.gaps.append((now - self.last_at) * 1000)
                if self.first_at is None:
                    self.first_at = now
                self.last_at = now
            yield output

    async def document(self) -> dict[str, Any]:
        """The whole answer (stream: false)."""
        try:
            async for output in self.outputs():
                self.shaper.add(output)
        except BaseException as exc:
            await self.finish(exc)
            raise
        await self.finish(None)
        return self.shaper.response(self.prompt_tokens)

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """Server-sent events: a chunk per output with text (the last with its finish reason), usage
        when asked for, `[DONE]`. An error after the first byte is an error event before `[DONE]`."""
        error: BaseException | None = None
        try:
            try:
                async for output in self.outputs():
                    chunk = self.shaper.chunk(output)
                    if chunk is not None:
                        yield sse(chunk)
                if self.call.include_usage:
                    yield sse(self.shaper.usage_chunk(self.prompt_tokens))
            except (HttpError, PortalError) as exc:
                error = exc
                status, message = _status_message(exc)
                yield sse(error_document(status, message))
            except Exception as exc:
                logger.exception("generation stream failed")
                error = exc
                yield sse(error_document(500, "Internal error in the prediction gateway."))
            yield SSE_DONE
        except BaseException as exc:  # the consumer left (GeneratorExit, CancelledError)
            error = exc
            raise
        finally:
            await self.finish(error)

    async def finish(self, error: BaseException | None) -> None:
        """Once: cancel what still runs, charge the tokens used, record the sample."""
        if self.ended:
            return
        self.ended = True
        if self.generation is not None:
            await self.generation.close()
        sample = self.sample
        if sample is None:
            return
        sample.prompt_tokens = self.prompt_tokens
        sample.completion_tokens = self.shaper.completion_tokens
        if self.first_at is not None and self.last_at is not None:
            sample.generation = {
                "ttft_ms": (self.first_at - sample.started) * 1000,
                "inter_token_ms": self.gaps,
                "decode_ms": (self.last_at - self.first_at) * 1000,
            }
        # Tokens read and generated are charged even when the answer was cut short.
        if sample.tokens:
            with contextlib.suppress(HttpError):
                await guard.tokens_charge(self.gateway.connection(), self.user, sample.tokens)
        if error is None:
            status = 200
        elif isinstance(error, asyncio.CancelledError | GeneratorExit):
            status = CLIENT_CLOSED
        else:
            status = _status_message(error)[0]
        try:
            sample.done(status)
        except Exception:
            # The answer went out (or is going): a monitoring fault must not turn it into an error.
            logger.exception("could not record a generation sample")


def _status_message(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, HttpError):
        return exc.status, exc.message
    if isinstance(exc, PortalError):
        return exc.status_code, exc.message
    return 500, "Internal error in the prediction gateway."


async def until_disconnected(receive: Receive) -> None:
    """Return once the client went away (after the request body, ASGI's receive waits for that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(work: Awaitable[T], receive: Receive) -> T | None:
    """Run `work`; cancel it if the client disconnects first (then None)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        watcher.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
    watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


# --- the ASGI app -------------------------------------------------------------------------------


class OpenAIApi:
    """/v1 over the gateway's caches, guard, coalescers, generation client and telemetry."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        admission.arrived.set(time.time())  # the request's deadline starts now
        headers = JSON_HEADERS
        try:
            path = request_checked(scope, dict(scope.get("headers") or []))
            if path in GENERATION_PATHS:
                await self.generate(path, scope, receive, send)
                return
            status, document = await self.route(scope, receive)
        except HttpError as exc:
            status, document = exc.status, error_document(exc.status, exc.message)
            headers = {**JSON_HEADERS, **exc.headers}
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
        """Dispatch a request that request_checked passed (method and media types already checked)."""
        path, method = scope["path"], scope["method"]
        headers = dict(scope.get("headers") or [])
        address = hygiene.client_address(scope)
        if path.rstrip("/") == "/v1/embeddings":
            return 200, await self.embeddings(headers, receive, address)
        if path.rstrip("/") == "/v1/models":
            user = await self.gateway.user(headers, address)
            return 200, {"object": "list", "data": await sync_to_async(models_usable, thread_sensitive=False)(user)}
        match = MODEL_PATH.match(path)
        if match is not None:
            user = await self.gateway.user(headers, address)
            try:
                return 200, await sync_to_async(model_retrieve, thread_sensitive=False)(user, match["id"])
            except NotFound:
                if not user.is_authenticated:
                    raise HttpError(401, AUTH_REQUIRED) from None
                raise
        message = (
            f"Invalid URL ({method} {path}): this portal's /v1 serves /v1/completions, /v1/chat/completions, "
            "/v1/embeddings and /v1/models."
        )
        return 404, error_document(404, message, code="unknown_url")

    async def generate(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/completions and /v1/chat/completions: errors before the first byte are raised."""
        headers = dict(scope.get("headers") or [])
        user, body, raw = await self._caller_and_body(headers, receive, hygiene.client_address(scope))
        call = GENERATION_PATHS[path](raw)
        run = GenerationRun(self.gateway, user, call, source="v1", payload=len(body))
        await unless_disconnected(self._answer(run, send), receive)

    async def _caller_and_body(
        self, headers: dict[bytes, bytes], receive: Receive, address: str
    ) -> tuple[Any, bytes, Any]:
        """The caller, the request body and its JSON (a 400 naming the syntax error when it is not JSON)."""
        user = await self.gateway.user(headers, address)
        body = await read_body(headers, receive)
        try:
            return user, body, orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise OpenAIError(f"The request body is not valid JSON: {exc}", None) from None

    async def _answer(self, run: GenerationRun, send: Send) -> None:
        await run.start()
        if not run.call.stream:
            await respond(send, 200, orjson.dumps(await run.document()), JSON_HEADERS)
            return
        headers = [(k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async with contextlib.aclosing(run.stream()) as events:
            async for data in events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def embeddings(self, headers: dict[bytes, bytes], receive: Receive, address: str) -> dict[str, Any]:
        user, body, raw = await self._caller_and_body(headers, receive, address)
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
    "GenerationRun",
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
