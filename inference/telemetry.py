"""What the serving plane reports about each prediction, to whoever monitors it.

Besides its timing, a prediction of a text model reports its usage: the prompt tokens the
model read and the completion tokens it generated, with the caller (user and API token) it
is charged to.

The gateway, the friendly endpoint, batch jobs and workers call the functions here (and
the gateway reads serving statistics through it); the monitoring app registers the sink (MonitoringConfig.ready), so the
serving plane never imports monitoring. Without a sink, reports go nowhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import ServiceUnavailable
from registry.access import grant_of
from registry.models import RegisteredModel


@dataclass(frozen=True)
class GenerationLoad:
    """One generation engine of a worker: its sequences and its KV cache, in tokens."""

    version_id: int
    model: str
    version: int
    running: int  # sequences decoding (and one being prefilled in chunks)
    waiting: int  # sequences taken from the queue, waiting for room in the batch
    cached_tokens: int  # tokens held in the KV cache
    reserved_tokens: int  # prompt + max_tokens of the running sequences
    budget_tokens: int  # the engine's cache budget (GENERATION_MAX_CACHE_TOKENS)


class TelemetrySink(Protocol):
    def record(
        self,
        *,
        version_id: int,
        model: str,
        version: int,
        source: str,
        alias: str,
        status: int,
        total_ms: float,
        queue_ms: float = 0.0,
        compute_ms: float = 0.0,
        batch_size: int = 0,
        payload_bytes: int = 0,
    ) -> None:
        """Count one prediction (called on the hot path: must not block)."""

    def usage(
        self,
        *,
        version_id: int,
        model: str,
        version: int,
        user_id: int | None,
        token_id: int | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """Meter the tokens of one answered request (called on the hot path: must not block)."""

    def generation(
        self,
        *,
        version_id: int,
        model: str,
        version: int,
        source: str,
        ttft_ms: float,
        inter_token_ms: list[float],
        completion_tokens: int,
        decode_ms: float,
    ) -> None:
        """Time one generated answer: to its first token, between its tokens (each gap as
        the client saw it), and from first to last token (called on the hot path: must not block)."""

    def worker_heartbeat(self, worker: str, models_loaded: int) -> None:
        """A worker's periodic report of what it holds."""

    def generation_load(self, worker: str, loads: list[GenerationLoad]) -> None:
        """A worker's periodic report of its generation engines (one entry per engine; [] when it has none)."""

    def stats(self, model: RegisteredModel, window: str | None, number: int | None) -> dict[str, Any]:
        """Serving statistics of a model, or of one version of it, over a window (hour, day, week)."""


class _NoSink:
    def record(self, **sample: Any) -> None:
        pass

    def generation(self, **sample: Any) -> None:
        pass

    def generation_load(self, worker: str, loads: list[GenerationLoad]) -> None:
        pass

    def usage(self, **usage: Any) -> None:
        pass

    def worker_heartbeat(self, worker: str, models_loaded: int) -> None:
        pass

    def stats(self, model: RegisteredModel, window: str | None, number: int | None) -> dict[str, Any]:
        raise ServiceUnavailable("Serving statistics are not available: no monitoring is installed.")


_sink: TelemetrySink = _NoSink()


def sink_register(sink: TelemetrySink) -> None:
    global _sink
    _sink = sink


def worker_heartbeat(worker: str, models_loaded: int) -> None:
    _sink.worker_heartbeat(worker, models_loaded)


def generation_load(worker: str, loads: list[GenerationLoad]) -> None:
    _sink.generation_load(worker, loads)


def stats(model: RegisteredModel, window: str | None, number: int | None = None) -> dict[str, Any]:
    return _sink.stats(model, window, number)


class Sample:
    """One prediction being timed: started now, finished by `done(status)`."""

    __slots__ = (
        *("alias", "completion_tokens", "model", "payload", "prompt_tokens", "source", "started", "timing"),
        *("generation", "token_id", "user_id", "version", "version_id"),
    )

    def __init__(self, version_id: int, model: str, version: int, path_version: str | None, source: str = "v2") -> None:
        self.version_id, self.model, self.version, self.source = version_id, model, version, source
        self.alias = alias_of(path_version)
        self.started = time.perf_counter()
        self.payload = 0
        # The worker's figures for the batch the request rode in: qt, ct (ms) and bs (rows).
        self.timing: dict[str, Any] | None = None
        # Usage, set by text entry points once the worker answered; charged to the caller.
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.user_id: int | None = None
        self.token_id: int | None = None
        # A generated answer's timing, set by the generation entry points once its first token
        # arrived: ttft_ms, inter_token_ms (list), decode_ms.
        self.generation: dict[str, Any] | None = None

    def caller(self, user: Any) -> None:
        """Charge this request's usage to `user` (and the API token it came with, if any)."""
        self.user_id = user.pk if user.is_authenticated else None
        grant = grant_of(user)
        self.token_id = grant.token_id if grant is not None else None

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens together (what a tokens-per-minute limit counts)."""
        return self.prompt_tokens + self.completion_tokens

    def done(self, status: int) -> None:
        timing = self.timing or {}
        if status < 400 and (self.prompt_tokens or self.completion_tokens):
            _sink.usage(
                version_id=self.version_id, model=self.model, version=self.version, user_id=self.user_id,
                token_id=self.token_id, prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
            )  # fmt: skip
        if self.generation is not None:
            _sink.generation(
                version_id=self.version_id, model=self.model, version=self.version, source=self.source,
                ttft_ms=self.generation["ttft_ms"], inter_token_ms=self.generation.get("inter_token_ms", []),
                completion_tokens=self.completion_tokens, decode_ms=self.generation.get("decode_ms", 0.0),
            )  # fmt: skip
        _sink.record(
            version_id=self.version_id, model=self.model, version=self.version, source=self.source, alias=self.alias,
            status=status, total_ms=(time.perf_counter() - self.started) * 1000, queue_ms=timing.get("qt", 0.0),
            compute_ms=timing.get("ct", 0.0), batch_size=timing.get("bs", 0), payload_bytes=self.payload,
        )  # fmt: skip

    def failed(self, exc: BaseException) -> None:
        """Record a request that ended in an exception, with the HTTP status it is answered with."""
        status = getattr(exc, "status", None) or getattr(exc, "status_code", None) or 500
        self.done(int(status))


def job_chunk(
    job: Any, rows: int, began: float, *, ok: bool, prompt_tokens: int = 0, completion_tokens: int = 0
) -> None:
    """Record one chunk of a batch job as one prediction of `rows` rows (source `job`).

    A text model's chunk also meters the tokens it read (and a generation job's chunk the
    tokens it wrote), for the job's owner (no API token: batch jobs are not held to a
    token's tokens per minute).
    """
    ms = (time.perf_counter() - began) * 1000
    if prompt_tokens or completion_tokens:
        _sink.usage(
            version_id=job.version_id, model=job.model_name, version=job.version_number, user_id=job.created_by_id,
            token_id=None, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        )  # fmt: skip
    _sink.record(
        version_id=job.version_id, model=job.model_name, version=job.version_number, source="job", alias="",
        status=200 if ok else 422, total_ms=ms, compute_ms=ms, batch_size=rows,
    )  # fmt: skip


def alias_of(path_version: str | None) -> str:
    """The alias a request used: the default `production`, an alias name, or '' for a pinned number."""
    if path_version is None:
        return "production"
    return "" if path_version.isdigit() else path_version
