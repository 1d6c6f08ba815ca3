"""Predictions from inside Django: the friendly REST endpoint and the browser's try-it form.

They share the Open Inference Protocol's checks (inference.protocol) and the workers'
wire format and serving loop with the /v2 gateway; only the transport differs: one
request, one message, a private reply list, no coalescing (this path is for people and
scripts, the gateway is for throughput). Admission is the gateway's (inference.admission):
the same per-process backlog of the version, the same 400 past max_batch_size.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import redis
from django.conf import settings

from core import redis as shared_redis
from core.errors import (
    GatewayTimeout,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    PortalError,
    ServiceUnavailable,
    Unprocessable,
)
from core.throttle import TOKENS, rate_hit, tokens_check
from inference import admission, protocol, telemetry, text, wire
from inference.wire import BatchReply, BatchRequest, Failure
from registry.access import grant_of
from registry.models import ModelVersion, VersionStatus
from registry.text_tasks import TEXT_INPUT

logger = logging.getLogger(__name__)

STATUS_ERRORS: dict[int, type[PortalError]] = {
    400: InvalidInput,
    413: PayloadTooLarge,
    422: Unprocessable,
    503: ServiceUnavailable,
    504: GatewayTimeout,
}


def _limiter() -> redis.Redis:
    try:
        return shared_redis.client()
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"The rate limiter (Redis) is unavailable: {exc}") from None


def rate_limit(user: Any) -> None:
    """Admit a prediction of a limited token, or refuse it 429 (503 without Redis); free for others.

    It counts one request against the token's requests per minute, and refuses one whose
    model tokens this minute already reached its tokens per minute (charged after answers).
    """
    grant = grant_of(user)
    if grant is None or not (grant.rate_limit_per_minute or grant.tokens_per_minute):
        return
    client = _limiter()
    if grant.rate_limit_per_minute:
        rate_hit(client, f"token {grant.token_id}", grant.rate_limit_per_minute)
    if grant.tokens_per_minute:
        tokens_check(client, f"token {grant.token_id}", grant.tokens_per_minute)


def tokens_charge(user: Any, tokens: int) -> None:
    """Charge an answered request's model tokens to its token's window (a Redis failure is only logged)."""
    grant = grant_of(user)
    if grant is not None and grant.tokens_per_minute and tokens > 0:
        try:
            TOKENS.charge(_limiter(), f"token {grant.token_id}", tokens)
        except ServiceUnavailable as exc:
            logger.warning("could not charge %d tokens to token %s: %s", tokens, grant.token_id, exc.message)


def friendly_to_tensors(signature: dict[str, Any], inputs: Any) -> dict[str, np.ndarray]:
    """`{"<input>": nested list}` checked against the signature (a single example gets its batch dim)."""
    if not isinstance(inputs, dict):
        raise InvalidInput('inputs must be an object: {"<input name>": nested list of values}.', field="inputs")
    specs = signature.get("inputs", [])
    tensors = []
    for spec in specs:
        if spec["name"] not in inputs:
            raise InvalidInput(f"Missing input {spec['name']!r}.", field="inputs")
        data = inputs[spec["name"]]
        try:
            shape = list(np.shape(data))
        except ValueError:
            raise InvalidInput(
                f"Input {spec['name']!r} is ragged: every row needs the same length.", field="inputs"
            ) from None
        if spec["shape"] and spec["shape"][0] == -1 and len(shape) == len(spec["shape"]) - 1:
            data, shape = [data], [1, *shape]
        tensors.append({"name": spec["name"], "datatype": spec["datatype"], "shape": shape, "data": data})
    unknown = sorted(set(inputs) - {spec["name"] for spec in specs})
    if unknown:
        raise InvalidInput(f"Unknown input(s) {', '.join(map(repr, unknown))}; the model takes "
                           f"{', '.join(repr(s['name']) for s in specs)}.", field="inputs")  # fmt: skip
    # Already parsed: decoded and checked as /v2 and gRPC inputs are, without a second encoding.
    return protocol.tensors_decode(
        tensors, [None] * len(tensors), signature, max_elements=settings.INFERENCE_MAX_ELEMENTS
    )


def rows_check(signature: dict[str, Any], tensors: dict[str, np.ndarray], max_batch_size: int, model: str,
               version: int) -> None:  # fmt: skip
    """Refuse (400, on `inputs`) a tensor request with more rows than the version's max_batch_size."""
    refusal = admission.rows_refusal(signature, tensors, max_batch_size, model, version)
    if refusal is not None:
        raise InvalidInput(refusal, field="inputs")


def tensor_answer(
    model: str, version: int, signature: dict[str, Any], labels: list[str] | tuple[str, ...],
    outputs: dict[str, np.ndarray], timing: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """A tensor model's friendly answer: outputs as nested lists, the timing of the hop, the labels."""
    body = {"model": model, "version": version,
            "outputs": {name: array.tolist() for name, array in outputs.items()}, "timing": timing}  # fmt: skip
    found = labels_for(labels, signature.get("outputs", []), outputs)
    if found is not None:
        body["labels"] = found
    return body


def hop_timing(total_seconds: float, reply: BatchReply) -> dict[str, Any]:
    """The `timing` of a friendly answer: the whole hop to a worker, its queue wait and compute, the worker."""
    return {"total_ms": round(total_seconds * 1000, 3), "queue_ms": round(reply.queue_ms, 3),
            "compute_ms": round(reply.compute_ms, 3), "worker": reply.worker}  # fmt: skip


def text_predict(
    version: ModelVersion, inputs: Any, parameters: Any, addressed: str | None = None, user: Any = None
) -> dict[str, Any]:
    """A text model's friendly prediction: answers in its task's shape, the hop's timing and the tokens read.

    `inputs` is a text (the answer is that text's) or a list of texts (a list of answers).
    `user` (the caller) is charged the tokens read: metered, and against its token's limit.
    """
    text.not_generative(version.task, version.model.name, version.version)
    request = text_request(version.task, inputs, parameters)
    outputs, timing = predict(version, request.tensors(), addressed, request.parameters, user=user)
    return text_answer(version.task, request, outputs, timing, version.labels)


@dataclass(frozen=True)
class TextRequest:
    """A text model's friendly request, checked: its texts, whether one string was sent, its parameters."""

    texts: list[str]
    single: bool
    parameters: dict[str, Any]

    def tensors(self) -> dict[str, np.ndarray]:
        return {TEXT_INPUT: text.texts_tensor(self.texts)}


def text_request(task: str, inputs: Any, parameters: Any) -> TextRequest:
    """Check a text model's friendly `inputs` (a text or a list of texts) and `parameters` against its task."""
    texts, single = text.friendly_texts(inputs)
    return TextRequest(texts, single, text.parameters_check(task, parameters))


def text_answer(
    task: str, request: TextRequest, outputs: dict[str, np.ndarray], timing: dict[str, Any],
    labels: list[str] | tuple[str, ...],
) -> dict[str, Any]:  # fmt: skip
    """A text model's friendly answer: its task's shape (one answer for one string), the timing, the tokens read."""
    answers = text.friendly_answer(task, request.texts, outputs, request.parameters, labels)
    return {"outputs": answers[0] if request.single else answers, "timing": timing,
            "usage": {"tokens": text.usage_tokens(outputs)}}  # fmt: skip


def predict(
    version: ModelVersion,
    tensors: dict[str, np.ndarray],
    addressed: str | None = None,
    parameters: dict[str, Any] | None = None,
    user: Any = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run one request on a worker of the model's queue; outputs by name and the timing of the hop.

    `addressed` is the version number or alias the caller named (None: the production alias);
    serving metrics record it. `parameters` (a text model's top_k, ...) travel with the request.
    A text model's tokens read are metered for `user` and charged to its token's limit.
    Its deadline, INFERENCE_TIMEOUT_SECONDS, runs from when it reached the server (inference.admission).
    """
    sample = telemetry.Sample(version.pk, version.model.name, version.version, addressed, source="native")
    sample.payload = payload_bytes(tensors)
    if user is not None:
        sample.caller(user)
    try:
        outputs, timing = _exchange(version, tensors, sample, parameters or {})
        if version.task:
            sample.prompt_tokens = text.usage_tokens(outputs)
            tokens_charge(user, sample.tokens)
    except Exception as exc:
        sample.failed(exc)
        raise
    sample.done(200)
    return outputs, timing


def payload_bytes(tensors: dict[str, np.ndarray]) -> int:
    """Bytes of a request's tensors, as serving metrics count a payload."""
    return sum(_size(array) for array in tensors.values())


def _size(array: np.ndarray) -> int:
    """Bytes of a tensor's data (a BYTES tensor's: its elements')."""
    return sum(len(item) for item in array.reshape(-1).tolist()) if wire.is_bytes(array) else array.nbytes


def _exchange(
    version: ModelVersion, tensors: dict[str, np.ndarray], sample: telemetry.Sample, parameters: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if version.status != VersionStatus.READY:
        raise ServiceUnavailable(
            f"Model {version.model.name!r} v{version.version} is {version.status}, not ready to serve."
        )
    if not version.task:
        rows_check(version.signature, tensors, version.max_batch_size, version.model.name, version.version)
    backlog = admission.backlog_of(version.pk)
    admitted, seen = backlog.admit()
    if not admitted:
        limit = settings.INFERENCE_MAX_QUEUED
        message = admission.overload_message(version.model.name, version.version, seen, limit)
        raise Overloaded(message, retry_after=backlog.retry_after())
    started = time.monotonic()
    try:
        return _exchange_admitted(version, tensors, sample, parameters)
    finally:
        backlog.release(started)


def _exchange_admitted(
    version: ModelVersion, tensors: dict[str, np.ndarray], sample: telemetry.Sample, parameters: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    reply_key = f"{wire.REPLY_PREFIX}sync:{uuid.uuid4().hex}"
    now = time.time()
    timeout = settings.INFERENCE_TIMEOUT_SECONDS
    deadline = admission.deadline()
    if deadline <= now:
        raise GatewayTimeout(
            f"The request for model {version.model.name!r} v{version.version} waited {timeout:g}s "
            "(INFERENCE_TIMEOUT_SECONDS) for this server, which is busy: it was not sent."
        )
    message = BatchRequest(uuid.uuid4().hex, reply_key, version.pk, now, deadline, [tensors], [parameters])
    started = time.perf_counter()
    try:
        # No read timeout: BRPOP waits on the server, up to the prediction timeout.
        client = shared_redis.client(timeout=None)
        client.lpush(wire.queue_key(version.model.serving_queue), message.encode())
        item = client.brpop([reply_key], timeout=max(0.01, deadline - time.time()))
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"The prediction broker is unavailable: {exc}") from None
    if item is None:
        raise GatewayTimeout(
            f"No worker answered for model {version.model.name!r} v{version.version} within {timeout:g}s."
        )
    try:
        reply = BatchReply.decode(cast(bytes, item[1]))
        (answer,) = reply.answers
    except (wire.WireError, ValueError) as exc:
        raise ServiceUnavailable(f"A worker sent a reply this portal cannot read: {exc}") from None
    sample.timing = {"qt": reply.queue_ms, "ct": reply.compute_ms, "bs": reply.batch_rows}
    if isinstance(answer, Failure):
        raise STATUS_ERRORS.get(answer.status, Unprocessable)(answer.message)
    return answer.tensors, hop_timing(time.perf_counter() - started, reply)


def labels_for(
    labels: list[str] | tuple[str, ...], output_specs: list[dict[str, Any]], outputs: dict[str, np.ndarray]
) -> list[str] | None:
    """Class names of the first output's argmax, when the version has labels and a 2-D first output."""
    if not labels or not output_specs:
        return None
    first = outputs.get(output_specs[0]["name"])
    if first is None or first.ndim != 2 or first.shape[1] != len(labels):
        return None
    return [labels[int(i)] for i in first.argmax(axis=1)]
