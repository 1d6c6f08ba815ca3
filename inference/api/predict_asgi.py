"""POST /api/v1/models/{name}/predict/ for API-token callers, answered in the gateway's event loop.

The endpoint's view (inference.api.predict.PredictView) runs in a Django thread, as every
view does: under overload, the threads of the admitted requests (up to
WEB_MAX_CONCURRENT_REQUESTS per process) share the GIL with the event loop that has to
answer the excess, so the 503s came late (a p99 of 180-559 ms at twice capacity, against
44-91 ms on /v2). A request with a bearer token and a JSON body is therefore taken here,
before Django, and goes the way a /v2 request goes: the caller and the route from the
gateway's caches, `guard` for roles, scopes and limits, the version's coalescer to the
workers, a `telemetry.Sample` (source `native`, as the view's). Nothing runs in a thread but
a cache miss's database lookup.

It answers as the view does, with the view's own pieces: the request serializer, the
checks and shaping of inference.predict, and the REST API's error bodies (core.api). What
it would answer differently it does not answer at all: before reading the body, a request
whose caller may not predict with the version it names (a missing model, a missing scope,
a generative or unready version, a malformed address) is handed to Django untouched, so
those answers, and the audit of a refused scope, stay the view's. A session, a form body,
other query parameters or an Accept the API does not serve go to Django from the start.
tests/integration/test_predict_asgi.py holds the two paths to the same answers.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from django.conf import settings
from rest_framework.exceptions import APIException

from core import hygiene
from core.api import api_exception_body, portal_error_body, request_too_large
from core.errors import PortalError, Unprocessable
from core.parsers import json_body_loads
from core.request_id import HEADER as REQUEST_ID_HEADER
from core.request_id import acceptable_request_id
from inference import admission, guard, predict, telemetry, text
from inference.api.predict import PredictRequestSerializer
from inference.gateway import NO_PARAMETERS, Gateway, HttpError, Receive, Scope, Send, read_body, respond
from inference.routes import Target
from registry import selectors
from registry.access import Action
from registry.models import VersionStatus
from registry.text_tasks import TextTask

PATH = re.compile(r"^/api/v1/models/(?P<name>[^/]+)/predict/$")
ADDRESS_PARAMETERS = frozenset({"version", "alias"})
JSON = "application/json"
# What the REST API calls an error the gateway raised by its status alone (core.errors' codes).
CODES = {401: "authentication_failed", 429: "rate_limited"}


def address_of(scope: Scope, headers: dict[bytes, bytes]) -> tuple[str, str | None] | None:
    """(model name, version number or alias) of a request this path answers, None for one it leaves to Django.

    Taken: a POST to the endpoint with `Authorization: Bearer <token>`, a JSON body (UTF-8),
    an Accept the API serves and at most one of ?version= and ?alias=, on a valid host.
    """
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    match = PATH.match(scope["path"])
    if match is None:
        return None
    keyword, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if keyword.lower() != "bearer" or not token.strip() or not _json_body(headers.get(b"content-type")):
        return None
    try:
        hygiene.host_checked(headers, scope.get("server"))
        hygiene.path_checked(scope["path"])
        hygiene.accept_checked(headers, (JSON,))
    except (HttpError, PortalError):
        return None
    query = _query(scope.get("query_string", b""))
    if query is None:
        return None
    addressed = query.get("version") or query.get("alias")
    if "version" in query and not query["version"].isdigit():
        return None
    try:
        selectors.address_checked(match["name"], addressed)
    except PortalError:
        return None
    return match["name"], addressed


def _json_body(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media, *parameters = content_type.decode("latin-1").split(";")
    if media.strip().lower() != JSON:
        return False
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower().replace("-", "") != "utf8":
            return False
    return True


def _query(raw: bytes) -> dict[str, str] | None:
    """?version= or ?alias= (one of them, once, not empty), {} for none; None for anything else."""
    if not raw:
        return {}
    pairs = [pair.partition("=") for pair in raw.decode("latin-1").split("&") if pair]
    names = [name for name, _, _ in pairs]
    if len(pairs) != 1 or not set(names) <= ADDRESS_PARAMETERS or not pairs[0][2]:
        return None
    name, _, value = pairs[0]
    if "%" in value or "+" in value:  # escaped: Django decodes it, and answers what it then means
        return None
    return {name: value}


class PredictASGI:
    """The endpoint for token callers over `gateway`; what it does not take goes to `django`."""

    def __init__(self, gateway: Gateway, django: Any) -> None:
        self.gateway = gateway
        self.django = django

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        address = address_of(scope, headers)
        if address is None:
            await self.django(scope, receive, send)
            return
        admission.arrived.set(time.time())  # the request's deadline starts now
        offered = headers.get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        response_headers = {
            "Content-Type": JSON,
            REQUEST_ID_HEADER: offered if acceptable_request_id(offered) else uuid.uuid4().hex,
            "X-Content-Type-Options": "nosniff",
        }
        try:
            prepared = await self.prepare(scope, headers, *address)
            if prepared is None:
                await self.django(scope, receive, send)
                return
            user, target = prepared
            status, document = 200, await self.predict(user, target, address[1], headers, receive)
        except (HttpError, PortalError, APIException) as exc:
            status, document, extra = error_answer(exc)
            response_headers.update(extra)
        await respond(send, status, orjson.dumps(document), response_headers)

    async def prepare(
        self, scope: Scope, headers: dict[bytes, bytes], name: str, addressed: str | None
    ) -> tuple[Any, Target] | None:
        """The caller and the version, or None when the view should answer (the body is still unread).

        A bad token is answered here (401, or 429 after too many): the gateway counts it for the
        bad-token throttle, and Django would count it twice.
        """
        user = await self.gateway.user(headers, hygiene.client_address(scope))
        try:
            guard.token_scoped(user, Action.PREDICT)
            target = await self.gateway.target(user, name, addressed)
            guard.authorize(user, target, Action.PREDICT)
        except (HttpError, PortalError):
            return None
        if target.status != VersionStatus.READY or target.task == TextTask.TEXT_GENERATION:
            return None
        return user, target

    async def predict(
        self, user: Any, target: Target, addressed: str | None, headers: dict[bytes, bytes], receive: Receive
    ) -> dict[str, Any]:
        """The view's steps from its rate limit on: limits, body, checks, the workers, the answer.

        A full backlog is refused first (503, counted in the serving metrics as the view counts
        it), before the body is read and before the caller's rate limit is charged.
        """
        sample = telemetry.Sample(target.version_id, target.model_name, target.version, addressed, source="native")
        sample.caller(user)
        client = self.gateway.connection()
        try:
            with self.gateway.place(target):
                await guard.rate_limit(client, user)
                await guard.tokens_check(client, user)
                # Refused past DATA_UPLOAD_MAX_MEMORY_SIZE, as Django refuses a body.
                raw = await read_body(headers, receive, settings.DATA_UPLOAD_MAX_MEMORY_SIZE, request_too_large)
                # In the loop: run in a thread, the decode held the GIL while the loop waited for it
                # on every system call (a convoy), and the refusals' p99 went from 0.4 s to 1.7 s.
                async with self.gateway.decode_turn(len(raw)):
                    request = request_decode(raw, target)
                tensors, parameters = request.tensors, request.parameters
                sample.payload = predict.payload_bytes(tensors)
                started = time.perf_counter()
                try:
                    answer, reply = await self.gateway.submit(target, tensors, parameters)
                except HttpError as exc:
                    raise worker_error(exc) from None
            timing = predict.hop_timing(time.perf_counter() - started, reply)
            sample.timing = {"qt": reply.queue_ms, "ct": reply.compute_ms, "bs": reply.batch_rows}
            outputs = answer.tensors
            if request.text is not None:
                sample.prompt_tokens = text.usage_tokens(outputs)
                await guard.tokens_charge(client, user, sample.tokens)
                shaped = predict.text_answer(target.task, request.text, outputs, timing, target.labels)
                document = {"model": target.model_name, "version": target.version, **shaped}
            else:
                document = predict.tensor_answer(
                    target.model_name, target.version, target.signature, target.labels, outputs, timing
                )
        except Exception as exc:
            sample.failed(exc)
            raise
        sample.done(200)
        return document


@dataclass(frozen=True)
class Decoded:
    """A request's tensors and parameters, checked against the version (and a text model's request)."""

    tensors: dict[str, np.ndarray]
    parameters: dict[str, Any]
    text: predict.TextRequest | None = None


def request_decode(raw: bytes, target: Target) -> Decoded:
    """The body parsed and validated as the view's parser and serializer do (an empty body is an
    empty object, as DRF reads it), then checked and decoded as the view does."""
    serializer = PredictRequestSerializer(data=json_body_loads(raw) if raw else {})
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    if target.task:
        asked = predict.text_request(target.task, data["inputs"], data.get("parameters"))
        return Decoded(asked.tensors(), asked.parameters, asked)
    tensors = predict.friendly_to_tensors(target.signature, data["inputs"])
    predict.rows_check(target.signature, tensors, target.max_batch_size, target.model_name, target.version)
    return Decoded(tensors, NO_PARAMETERS)


def worker_error(exc: HttpError) -> HttpError | PortalError:
    """What the view answers for the same outcome of a prediction: a worker's failure by its
    status (an unknown one is the model's error, 422), a refusal of the gateway's as it is."""
    if exc.code or exc.headers:
        return exc
    return predict.STATUS_ERRORS.get(exc.status, Unprocessable)(exc.message)


def error_answer(exc: HttpError | PortalError | APIException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers of an error, in the REST API's shape (core.api)."""
    if isinstance(exc, PortalError):
        return exc.status_code, portal_error_body(exc), dict(getattr(exc, "headers", {}))
    if isinstance(exc, APIException):
        return exc.status_code, api_exception_body(exc), {}
    code = exc.code or CODES.get(exc.status) or predict.STATUS_ERRORS.get(exc.status, Unprocessable).code
    headers = dict(exc.headers)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return exc.status, {"error": exc.message, "code": code}, headers


__all__ = [
    "PATH", "Decoded", "PredictASGI", "address_of", "error_answer", "request_decode", "worker_error",
]  # fmt: skip
