"""What crosses Redis for text generation between the gateways and the workers' engines.

Like `inference.wire` (msgpack arrays, the kind first, never pickle), with three lists:

- `request_queue_key(queue)`: a gateway LPUSHes a `GenerateRequest` on the model's serving
  queue; a worker with room in its engine RPOPs it (the backlog stays in Redis, where any
  worker of the queue can take it and where its length is the admission check).
- `stream_key` (named by the request's `reply_to`, one per gateway process): after every
  decoding step a worker LPUSHes ONE `StepEvents` per gateway holding the events of every
  sequence of that gateway: one Redis round trip per step for all of the worker's sequences.
- `cancel_key(worker)`: a gateway LPUSHes the ids of requests whose client went away; the
  worker RPOPs them in its per-step round trip and drops the sequences at the next step. A
  request not yet accepted is LREMed from its queue instead (its exact bytes).

A request's events, in order: `accepted` once (the worker took it: prompt checked and
tokenised, sequence queued in the engine), then `output` per step (the last carries a
finish reason), or an `error` at any point (a refused prompt: 400; no room: 503; past its
deadline: 504). Change a layout and you change its kind's tag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from inference.wire import WireError

REQUEST_PREFIX = "maas:gen:queue:"
STREAM_PREFIX = "maas:gen:stream:"
CANCEL_PREFIX = "maas:gen:cancel:"
# Events and cancellations nobody collects (their process died) disappear after this long.
STREAM_TTL_SECONDS = 120

# The sampling settings a request may carry in `params` (see inference.generation.SamplingParams).
PARAM_NAMES = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "logprobs")
# A flag beside them: max_tokens is the model's default, not the caller's, so a worker shortens
# it to the room the context leaves after the prompt instead of refusing the prompt.
IMPLICIT_MAX_TOKENS = "max_tokens_implicit"


def request_queue_key(queue: str) -> str:
    return f"{REQUEST_PREFIX}{queue}"


def stream_key(gateway_id: str) -> str:
    return f"{STREAM_PREFIX}{gateway_id}"


def cancel_key(worker: str) -> str:
    return f"{CANCEL_PREFIX}{worker}"


def _pack(fields: list[Any]) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def _fields(raw: bytes, kind: str, count: int) -> list[Any]:
    try:
        fields = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise WireError(f"not a msgpack message: {exc}") from None
    if not isinstance(fields, list) or not fields or fields[0] != kind:
        found = fields[0] if isinstance(fields, list) and fields else type(fields).__name__
        raise WireError(f"expected a {kind!r} message, got {found!r}")
    if len(fields) != count + 1:
        raise WireError(f"a {kind!r} message has {count} fields, not {len(fields) - 1}")
    return fields[1:]


@dataclass(frozen=True)
class GenerateRequest:
    """One completion or chat request for one model version.

    Exactly one of `prompt` (a completion: the text to continue) and `messages` (a chat:
    [{"role", "content"}], turned into a prompt by the tokenizer's chat template on the
    worker) is set. `params` holds PARAM_NAMES, already checked by the gateway.
    """

    KIND: ClassVar[str] = "gen.request.1"

    id: str
    reply_to: str
    version_id: int
    sent_at: float
    deadline: float
    prompt: str | None
    messages: list[dict[str, str]] | None
    params: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return _pack([self.KIND, self.id, self.reply_to, self.version_id, self.sent_at, self.deadline, self.prompt,
                      self.messages, self.params])  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes) -> GenerateRequest:
        id_, reply_to, version_id, sent_at, deadline, prompt, messages, params = _fields(raw, cls.KIND, 8)
        if (
            not isinstance(id_, str) or not isinstance(reply_to, str) or not isinstance(version_id, int)
            or not isinstance(sent_at, float | int) or not isinstance(deadline, float | int)
            or not isinstance(params, dict) or (prompt is None) == (messages is None)
            or not (prompt is None or isinstance(prompt, str))
            or not (messages is None or isinstance(messages, list))
        ):  # fmt: skip
            raise WireError(f"a {cls.KIND!r} message has a field of the wrong type")
        return cls(id_, reply_to, version_id, float(sent_at), float(deadline), prompt, messages, params)


@dataclass(frozen=True)
class Accepted:
    """A worker took the request: its prompt's tokens, and how long it waited in the queue."""

    KIND: ClassVar[str] = "acc"

    request_id: str
    prompt_tokens: int
    queue_ms: float

    def packed(self) -> list[Any]:
        return [self.KIND, self.request_id, self.prompt_tokens, self.queue_ms]


@dataclass(frozen=True)
class Output:
    """One step of one sequence: its new tokens, the text they made final, and (last) why it ended."""

    KIND: ClassVar[str] = "out"

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop", "length", "cancelled"
    completion_tokens: int
    logprobs: list[float] | None = None

    def packed(self) -> list[Any]:
        return [self.KIND, self.request_id, self.text, self.token_ids, self.finish_reason, self.completion_tokens,
                self.logprobs]  # fmt: skip


@dataclass(frozen=True)
class Refused:
    """The request ends without (more) output: an HTTP status and a message naming the problem."""

    KIND: ClassVar[str] = "err"

    request_id: str
    status: int
    message: str

    def packed(self) -> list[Any]:
        return [self.KIND, self.request_id, self.status, self.message]


Event = Accepted | Output | Refused


def _event(fields: Any) -> Event:
    if isinstance(fields, list) and fields:
        kind, rest = fields[0], fields[1:]
        try:
            if kind == Accepted.KIND and len(rest) == 3:
                return Accepted(str(rest[0]), int(rest[1]), float(rest[2]))
            if kind == Output.KIND and len(rest) == 6:
                return Output(str(rest[0]), str(rest[1]), list(rest[2]), rest[3], int(rest[4]), rest[5])
            if kind == Refused.KIND and len(rest) == 3:
                return Refused(str(rest[0]), int(rest[1]), str(rest[2]))
        except (TypeError, ValueError):
            pass
    raise WireError(f"not a generation event: {str(fields)[:80]}")


@dataclass(frozen=True)
class StepEvents:
    """The events of one decoding step of one worker for the sequences of one gateway."""

    KIND: ClassVar[str] = "gen.events.1"

    worker: str
    sent_at: float
    events: list[Event]

    def encode(self) -> bytes:
        return _pack([self.KIND, self.worker, self.sent_at, [event.packed() for event in self.events]])

    @classmethod
    def decode(cls, raw: bytes) -> StepEvents:
        worker, sent_at, events = _fields(raw, cls.KIND, 3)
        if not isinstance(worker, str) or not isinstance(sent_at, float | int) or not isinstance(events, list):
            raise WireError(f"a {cls.KIND!r} message has a field of the wrong type")
        return cls(worker, float(sent_at), [_event(event) for event in events])


__all__ = [
    "CANCEL_PREFIX",
    "IMPLICIT_MAX_TOKENS",
    "PARAM_NAMES",
    "REQUEST_PREFIX",
    "STREAM_PREFIX",
    "STREAM_TTL_SECONDS",
    "Accepted",
    "Event",
    "GenerateRequest",
    "Output",
    "Refused",
    "StepEvents",
    "cancel_key",
    "request_queue_key",
    "stream_key",
]
