"""Admission control for predictions: a bounded backlog per model version, and the row limit of one request.

Each web process keeps, per model version, the number of requests it admitted and has not
answered yet (waiting in the gateway's coalescer, queued for a worker, or running). Past
INFERENCE_MAX_QUEUED a new request is refused at once with 503 and a `Retry-After` of about
what an answered request took lately, rather than queued to time out later: a full queue
means the workers are behind, and a caller is better served by a fast refusal it can retry
(or send elsewhere) than by a 504 after the whole deadline. The bound also caps the Redis
queue a web process can fill (/v2 sends at most INFERENCE_MAX_IN_FLIGHT batches at once
anyway; the friendly endpoint sends one message per request).

The count alone would admit, for a slow model, more than its workers can answer in time:
on /v2 a request is also refused when the wait it can expect in the coalescer (the batches
ahead of it, at the recent time per batch) is longer than its deadline; it would only end
in a 504.

A request takes its place before its body is read, where the address says which version it is
for (/v2, gRPC, the friendly endpoint): the requests being read and decoded count in the
backlog. Counted only once they reached the coalescer, a burst was all admitted, read and
decoded, and most of it refused afterwards: slow 503s, after the work they were meant to save.

A request's deadline (INFERENCE_TIMEOUT_SECONDS) starts when it reaches the server (`arrived`,
set by the ASGI apps; the friendly endpoint's by portal.concurrency): its authorisation, the
wait for a turn and the wait in the queues all count.

A request's rows are one forward pass on the worker: a tensor request with more rows than
the version's max_batch_size is refused 400 naming the limit (the caller splits it, as it
knows how; a worker never runs a batch larger than the owner allowed). Text requests are
exempt: their texts are already cut into forwards of at most max_batch_size rows on the
worker (inference.cache), and INFERENCE_TEXT_MAX_ITEMS bounds them.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from typing import Any

import numpy as np
from django.conf import settings

RETRY_AFTER_MIN, RETRY_AFTER_MAX = 1, 30
# When the request being handled reached this server (epoch seconds): its deadline starts there.
# Set by the ASGI apps (inference.gateway, inference.openai) as a request comes in.
arrived: contextvars.ContextVar[float | None] = contextvars.ContextVar("maas_request_arrived", default=None)
# The model version (its id) whose place the request being handled holds, taken before its
# body was read (Gateway.place): the request's submit does not take a second one.
held: contextvars.ContextVar[int | None] = contextvars.ContextVar("maas_request_place", default=None)
# Weight of the latest answer in the smoothed latency that Retry-After reports.
SMOOTHING = 0.2


def deadline() -> float:
    """The deadline of the request being handled: INFERENCE_TIMEOUT_SECONDS after it arrived (or from now)."""
    return (arrived.get() or time.time()) + settings.INFERENCE_TIMEOUT_SECONDS


def smoothed(previous: float, latest: float) -> float:
    """An exponentially weighted mean (the first value taken as is)."""
    return latest if not previous else previous + SMOOTHING * (latest - previous)


def retry_after(latency_seconds: float) -> int:
    """Whole seconds a refused caller should wait: about what an answered request took lately."""
    return max(RETRY_AFTER_MIN, min(RETRY_AFTER_MAX, math.ceil(latency_seconds)))


def overload_message(model: str, version: int, backlog: int, limit: int) -> str:
    return (
        f"Model {model!r} v{version} has {backlog} requests waiting or running in this server, the limit "
        f"(INFERENCE_MAX_QUEUED) is {limit}: it is over capacity, retry shortly."
    )


def expected_wait(waiting: int, max_batch_size: int, in_flight: int, max_in_flight: int, batch_seconds: float) -> float:
    """Seconds until a request joining `waiting` others is answered, at `batch_seconds` per batch.

    Batches of max_batch_size go out max_in_flight at a time; when all are in flight, the new
    request's batch waits for a wave to come back first.
    """
    batches_ahead = waiting // max(1, max_batch_size) + 1
    waves = math.ceil(batches_ahead / max_in_flight) + (1 if in_flight >= max_in_flight else 0)
    return waves * batch_seconds


def late_message(model: str, version: int, waiting: int, expected: float, timeout: float) -> str:
    return (
        f"Model {model!r} v{version} has {waiting} requests waiting in this server; a new one would wait about "
        f"{expected:.1f}s, past its deadline of {timeout:g}s (INFERENCE_TIMEOUT_SECONDS): retry shortly."
    )


def batches(signature: dict[str, Any]) -> bool:
    """True when every input of the signature has a variable first (batch) dimension."""
    inputs = signature.get("inputs") or []
    return bool(inputs) and all(spec.get("shape") and spec["shape"][0] == -1 for spec in inputs)


def rows_refusal(
    signature: dict[str, Any], tensors: dict[str, np.ndarray], max_batch_size: int, model: str, version: int
) -> str | None:
    """Why a tensor request has too many rows for one forward pass (None when it fits)."""
    if not tensors or not batches(signature):
        return None
    first = next(iter(tensors.values()))
    rows = int(first.shape[0]) if first.ndim else 1
    if rows <= max_batch_size:
        return None
    return (
        f"The request has {rows} rows; model {model!r} v{version} takes at most {max_batch_size} per request "
        "(its max_batch_size): split it into several requests."
    )


class Backlog:
    """Requests of one model version admitted by this process and not answered yet.

    Thread-safe (the friendly endpoint runs in Django's threads; the gateway on its event loop).
    """

    __slots__ = ("count", "latency", "lock")

    def __init__(self) -> None:
        self.count = 0
        self.latency = 0.0  # smoothed seconds from admission to answer
        self.lock = threading.Lock()

    def admit(self) -> tuple[bool, int]:
        """Take a place if there is one: (admitted, the backlog seen)."""
        limit = settings.INFERENCE_MAX_QUEUED
        with self.lock:
            if self.count >= limit:
                return False, self.count
            self.count += 1
            return True, self.count

    def release(self, started: float) -> None:
        """Give the place back; `started` (time.monotonic() at admission) feeds the Retry-After estimate."""
        took = time.monotonic() - started
        with self.lock:
            self.count -= 1
            self.latency = smoothed(self.latency, took)

    def retry_after(self) -> int:
        return retry_after(self.latency)


_backlogs: dict[int, Backlog] = {}
_backlogs_lock = threading.Lock()


def backlog_of(version_id: int) -> Backlog:
    """This process's backlog of a model version (created on first use)."""
    backlog = _backlogs.get(version_id)
    if backlog is None:
        with _backlogs_lock:
            backlog = _backlogs.setdefault(version_id, Backlog())
    return backlog


__all__ = [
    "Backlog", "arrived", "backlog_of", "batches", "deadline", "expected_wait", "held", "late_message",
    "overload_message", "retry_after", "rows_refusal", "smoothed",
]  # fmt: skip
