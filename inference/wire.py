"""What crosses Redis between the prediction gateways and the workers: msgpack, never pickle.

Three kinds of message, each a dataclass with one encode() that builds its bytes and one
decode() that reads them back or raises WireError:

- BatchRequest: one coalesced batch for one model version, pushed on the version's queue;
- BatchReply: the worker's answer, one Outputs or Failure per request of the batch, pushed
  on the reply list the request named;
- Heartbeat: a worker's registration in the WORKERS_KEY hash (its queues, loaded versions).

Beside them, TAKEN_KEY records which batches each worker took last (plain batch ids).

On the wire a message is a msgpack array, its kind first, then its fields in order: no
field names to pack or hash on the hot path. Tensors travel as [datatype, shape, raw
little-endian bytes] by name; BYTES tensors (texts) as ["BYTES", shape, [bytes, ...]].
Each request of a batch carries its own parameters (a map; e.g. fill-mask's top_k), so
requests with different settings can share a batch. Change a layout and you change its kind's tag, so a process
of the old release refuses the message instead of misreading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np

from core.datatypes import NUMPY_DTYPES, datatype_of_array

QUEUE_PREFIX = "maas:serve:"
REPLY_PREFIX = "maas:reply:"
WORKERS_KEY = "maas:workers"
# The batches each worker popped last, by worker identity: their ids joined by TAKEN_SEPARATOR,
# written right after the pop (before they are computed). A gateway whose batch a dead worker
# took answers its requests 503 at once, whenever the death came (inference.gateway).
TAKEN_KEY = "maas:taken"
TAKEN_SEPARATOR = ","
# A worker's heartbeat connection is named this plus its identity: it closes when the process
# dies, however it dies, so a gateway sees the death at once in CLIENT LIST.
WORKER_CLIENT_PREFIX = "maas-worker:"
# A reply nobody collects (its gateway died) disappears after this many seconds.
REPLY_TTL_SECONDS = 120

Tensors = dict[str, np.ndarray]


class WireError(ValueError):
    """Bytes that are not a well-formed message of the expected kind."""


def queue_key(queue: str) -> str:
    return f"{QUEUE_PREFIX}{queue}"


def rows(tensors: Tensors) -> int:
    """Rows in a request: the first dimension of its first input (1 for a scalar)."""
    first = next(iter(tensors.values()))
    return int(first.shape[0]) if first.ndim else 1


def is_bytes(array: np.ndarray) -> bool:
    """True for a BYTES tensor: an object array of bytes/str, or a numpy string array."""
    return array.dtype.kind in "OSU"


def bytes_array(items: list[bytes], shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """An object array of `items` in `shape` (np.array would make fixed-width strings of them)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def _bytes_items(array: np.ndarray) -> list[bytes]:
    return [item.encode() if isinstance(item, str) else bytes(item) for item in array.reshape(-1).tolist()]


def _pack_tensors(tensors: Tensors) -> dict[str, list[Any]]:
    packed = {}
    for name, array in tensors.items():
        if is_bytes(array):
            packed[name] = ["BYTES", list(array.shape), _bytes_items(array)]
            continue
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        packed[name] = [datatype_of_array(array), list(array.shape), little.tobytes()]
    return packed


def _unpack_tensors(packed: Any) -> Tensors:
    if not isinstance(packed, dict):
        raise WireError(f"tensors must be a map by name, not {type(packed).__name__}")
    tensors = {}
    try:
        for name, (datatype, shape, raw) in packed.items():
            if datatype == "BYTES":
                if not isinstance(raw, list) or not all(isinstance(item, bytes) for item in raw):
                    raise WireError(f"BYTES tensor {name!r} must be a list of byte strings")
                tensors[name] = bytes_array(raw, shape)
                continue
            dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
            # bytearray: a writable buffer, so torch.from_numpy can share it without a warning.
            array = np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
            tensors[name] = array.astype(NUMPY_DTYPES[datatype], copy=False)
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"malformed tensor: {exc!r}") from None
    return tensors


def tensors_pack(tensors: Tensors) -> dict[str, list[Any]]:
    """Tensors as msgpack-ready lists (the model sandbox's channel carries them this way too)."""
    return _pack_tensors(tensors)


def tensors_unpack(packed: Any) -> Tensors:
    """The tensors of `tensors_pack`; WireError when malformed."""
    return _unpack_tensors(packed)


def _fields(raw: bytes, kind: str, count: int) -> list[Any]:
    """The fields of a message of `kind` that has `count` of them."""
    try:
        fields = msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireError(f"not msgpack: {exc!r}") from None
    if not isinstance(fields, list) or not fields or fields[0] != kind:
        found = fields[0] if isinstance(fields, list) and fields else type(fields).__name__
        raise WireError(f"expected a {kind!r} message, got {found!r}")
    if len(fields) != count + 1:
        raise WireError(f"a {kind!r} message has {count} fields, not {len(fields) - 1}")
    return fields


def _mistyped(kind: str, names: str, *values: Any) -> WireError:
    """The error for fields of the wrong type (checked inline by the callers: this is the hot path)."""
    found = ", ".join(f"{name}: {type(value).__name__}" for name, value in zip(names.split(), values, strict=True))
    return WireError(f"a {kind!r} message has a field of the wrong type ({found})")


def _pack(fields: list[Any]) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


@dataclass(slots=True)
class BatchRequest:
    """A coalesced batch of requests for one model version."""

    KIND: ClassVar[str] = "batch.2"

    batch_id: str
    reply_to: str  # the Redis list the reply goes to
    version_id: int
    sent_at: float  # epoch seconds: the worker reports the queue wait from it
    deadline: float  # epoch seconds: past it nobody waits for the answer, and none is computed
    requests: list[Tensors]
    # One map per request ({} for none): settings such as top_k that apply to that request only.
    parameters: list[dict[str, Any]] = field(default_factory=list)

    def encode(self) -> bytes:
        parameters = self.parameters or [{} for _ in self.requests]
        return _pack([self.KIND, self.batch_id, self.reply_to, self.version_id, self.sent_at, self.deadline,
                      [_pack_tensors(tensors) for tensors in self.requests], parameters])  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes) -> BatchRequest:
        _, batch_id, reply_to, version_id, sent_at, deadline, requests, parameters = _fields(raw, cls.KIND, 7)
        if not (
            isinstance(batch_id, str) and isinstance(reply_to, str) and isinstance(version_id, int)
            and isinstance(sent_at, float | int) and isinstance(deadline, float | int) and isinstance(requests, list)
            and isinstance(parameters, list)
        ):  # fmt: skip
            raise _mistyped(cls.KIND, "batch_id reply_to version_id sent_at deadline requests parameters",
                            batch_id, reply_to, version_id, sent_at, deadline, requests, parameters)  # fmt: skip
        if len(parameters) != len(requests) or not all(isinstance(p, dict) for p in parameters):
            raise WireError("a batch needs one parameter map per request")
        return cls(batch_id, reply_to, version_id, sent_at, deadline, [_unpack_tensors(p) for p in requests],
                   parameters)  # fmt: skip

    def parameters_of(self, index: int) -> dict[str, Any]:
        """The parameters of request `index` ({} when the sender gave none)."""
        return self.parameters[index] if self.parameters else {}


@dataclass(slots=True)
class Outputs:
    """The answer to one request that the model ran: its outputs by name."""

    KIND: ClassVar[str] = "ok"

    tensors: Tensors

    def packed(self) -> list[Any]:
        return [self.KIND, _pack_tensors(self.tensors)]

    @classmethod
    def unpacked(cls, fields: list[Any]) -> Outputs:
        return cls(_unpack_tensors(fields[1]))


@dataclass(slots=True)
class Failure:
    """The answer to one request that failed: a message for the caller and its HTTP status."""

    KIND: ClassVar[str] = "err"

    message: str
    status: int

    def packed(self) -> list[Any]:
        return [self.KIND, self.message, self.status]

    @classmethod
    def unpacked(cls, fields: list[Any]) -> Failure:
        if not (isinstance(fields[1], str) and isinstance(fields[2], int)):
            raise _mistyped(cls.KIND, "message status", fields[1], fields[2])
        return cls(fields[1], fields[2])


Answer = Outputs | Failure


def _answer(fields: Any) -> Answer:
    if isinstance(fields, list):
        if len(fields) == 2 and fields[0] == Outputs.KIND:
            return Outputs.unpacked(fields)
        if len(fields) == 3 and fields[0] == Failure.KIND:
            return Failure.unpacked(fields)
    raise WireError(f"an answer is {Outputs.KIND!r} with outputs or {Failure.KIND!r} with a message and a status")


@dataclass(slots=True)
class BatchReply:
    """A worker's answers to a batch, in the batch's order, and where the time went."""

    KIND: ClassVar[str] = "reply.1"

    batch_id: str
    answers: list[Answer]
    queue_ms: float  # from sent_at until the worker popped the batch
    compute_ms: float  # loading and forward passes of all this version's batches popped with it
    batch_rows: int  # rows in the largest forward pass the batch shared
    worker: str

    def encode(self) -> bytes:
        return _pack([self.KIND, self.batch_id, [answer.packed() for answer in self.answers], self.queue_ms,
                      self.compute_ms, self.batch_rows, self.worker])  # fmt: skip

    @classmethod
    def decode(cls, raw: bytes) -> BatchReply:
        _, batch_id, answers, queue_ms, compute_ms, batch_rows, worker = _fields(raw, cls.KIND, 6)
        if not (
            isinstance(batch_id, str) and isinstance(answers, list) and isinstance(queue_ms, float | int)
            and isinstance(compute_ms, float | int) and isinstance(batch_rows, int) and isinstance(worker, str)
        ):  # fmt: skip
            raise _mistyped(cls.KIND, "batch_id answers queue_ms compute_ms batch_rows worker",
                            batch_id, answers, queue_ms, compute_ms, batch_rows, worker)  # fmt: skip
        return cls(batch_id, [_answer(answer) for answer in answers], queue_ms, compute_ms, batch_rows, worker)


@dataclass(slots=True)
class Heartbeat:
    """A worker's registration as of `beat_at`: the queues it serves, the versions it holds and
    those it is loading (the batches it took are in TAKEN_KEY, written as it takes them)."""

    KIND: ClassVar[str] = "beat.3"

    queues: list[str]
    beat_at: float  # epoch seconds
    loaded: list[int]  # model version ids resident in the worker's cache
    loading: list[int] = field(default_factory=list)  # version ids being loaded right now

    def encode(self) -> bytes:
        return _pack([self.KIND, self.queues, self.beat_at, self.loaded, self.loading])

    @classmethod
    def decode(cls, raw: bytes) -> Heartbeat:
        _, queues, beat_at, loaded, loading = _fields(raw, cls.KIND, 4)
        if not (
            isinstance(queues, list) and isinstance(beat_at, float | int) and isinstance(loaded, list)
            and isinstance(loading, list)
        ):  # fmt: skip
            raise _mistyped(cls.KIND, "queues beat_at loaded loading", queues, beat_at, loaded, loading)
        if not all(isinstance(text, str) for text in queues):
            raise WireError("queues must be strings")
        if not all(isinstance(version, int) for version in [*loaded, *loading]):
            raise WireError("loaded and loading versions must be integers")
        return cls(queues, beat_at, loaded, loading)


__all__ = [
    "Answer",
    "BatchReply",
    "BatchRequest",
    "Failure",
    "Heartbeat",
    "Outputs",
    "Tensors",
    "WireError",
    "bytes_array",
    "is_bytes",
    "queue_key",
    "rows",
    "tensors_pack",
    "tensors_unpack",
]
