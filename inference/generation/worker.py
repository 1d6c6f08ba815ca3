"""The generation loop of a worker process: continuous batching for every generative model it serves.

A thread started beside the serving loop (inference.serving) when the worker serves
prediction queues. It hosts one `Engine` per generative model version, created on the
first request for it from the model cache, and drives them all:

1. step every engine that has work (one decoding step of its running sequences, then the
   prefill of newcomers);
2. one Redis round trip (a pipeline) that pushes ONE `StepEvents` per gateway holding all
   the events of that step, pops the request ids gateways cancelled, and pops new
   `GenerateRequest`s from the queues, only as many as there is room for: the backlog
   stays in Redis where another worker can take it and the gateway's admission check
   counts it;
3. admit what was popped (checked, tokenised and queued in its engine: `Accepted`, or
   `Refused` with a status) and cancel what was asked; those events ride with the next step.

With no engine at work it blocks in BRPOP on the request queues (one second at a time),
as the serving loop does.

One thread steps every engine, one after the other, rather than a thread per engine: a
process runs one forward at a time anyway (a CPU's cores are already shared by torch's
intra-op threads, and a GPU serialises kernels of one process's default stream), so more
threads would only contend for them and for the GIL, and each engine (not thread-safe)
stays owned by one thread. An engine's model is used under its `LoadedModel.lock`, which
other users of the same cached model (a batch job, a /v2 request refused for it) take too.
The process's torch thread settings (OMP_NUM_THREADS, torch.set_num_threads) are global
in torch and apply to this thread as to the main one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from django.conf import settings

from core import redis as shared_redis
from inference import telemetry
from inference.cache import LoadedModel, ModelUnavailable, model_cache
from inference.generation.engine import Engine, EngineFull, GenerationRequest, StepOutput
from inference.generation.messages import (
    PARAM_NAMES,
    STREAM_TTL_SECONDS,
    Accepted,
    Event,
    GenerateRequest,
    Output,
    Refused,
    StepEvents,
    cancel_key,
    request_queue_key,
)
from inference.generation.sampling import SamplingParams
from inference.runtimes import TextRuntime
from inference.services import exception_summary
from inference.wire import WireError

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
# Cancellations popped per round trip (more wait for the next one).
MAX_CANCELS = 256
# How long an idle loop blocks on the request queues before it looks at its engines again.
IDLE_BLOCK_SECONDS = 1


@dataclass(eq=False)
class Live:
    """A request being generated: where its events go and which engine sequence it is."""

    request_id: str
    reply_to: str
    version_id: int
    sequence_id: int
    deadline: float


@dataclass(eq=False)
class Hosted:
    """A generative model version this worker hosts: its cached model, its engine and its sequences."""

    model: LoadedModel
    engine: Engine
    sequences: dict[int, Live] = field(default_factory=dict)

    def idle(self) -> bool:
        return not self.sequences and not self.engine.has_work()


class GenerationLoop(threading.Thread):
    """Pops generation requests from this worker's queues and streams their tokens back, a step at a time."""

    def __init__(self, queues: list[str], identity: str) -> None:
        super().__init__(name="maas-generation", daemon=True)
        self.queues = queues
        self.keys = [request_queue_key(queue) for queue in queues]
        self.identity = identity
        self.cancel_key = cancel_key(identity)
        # Its own read timeout: longer than the one-second BRPOP, short enough to notice a Redis that stopped.
        self.redis = shared_redis.client(timeout=10)
        self.stopping = threading.Event()
        self.engines: dict[int, Hosted] = {}
        self.live: dict[str, Live] = {}
        # Events not yet pushed, per reply list (gateway), in the order they happened.
        self.outbox: dict[str, list[Event]] = {}
        # Per engine; a worker takes at most GENERATION_MAX_SEQUENCES requests at once (see `room`),
        # so as many may wait inside an engine (for cache room) as run in it.
        self.engine_options: dict[str, Any] = {
            "max_sequences": settings.GENERATION_MAX_SEQUENCES,
            "max_tokens": settings.GENERATION_MAX_CACHE_TOKENS,
            "prefill_tokens": settings.GENERATION_PREFILL_TOKENS,
            "max_waiting": settings.GENERATION_MAX_SEQUENCES,
        }
        self.steps = 0
        self._last_heartbeat = 0.0
        self._load_report_failed = False

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        logger.info("generating for %s as %s", ", ".join(self.queues), self.identity)
        while not self.stopping.is_set():
            try:
                self.cycle()
            except redis.RedisError as exc:
                logger.warning("generation loop lost Redis (%s); retrying", exc)
                time.sleep(1)
            except Exception:  # the loop must outlive any single bad request
                logger.exception("generation loop error")
        self.shutdown()

    def cycle(self, *, block: bool = True) -> None:
        """One iteration: step the engines, one round trip, admit and cancel what it brought."""
        self._heartbeat()
        self.step()
        requests, cancels = self.exchange()
        for raw in requests:
            self.take(raw)
        for request_id in cancels:
            self.cancel(request_id)
        if block and not requests and not self.busy():
            item = self.redis.brpop(self.keys, timeout=IDLE_BLOCK_SECONDS)
            if item is not None:
                self.take(cast(bytes, item[1]))

    def busy(self) -> bool:
        """Whether the next cycle has something to do without waiting for a request."""
        return bool(self.outbox) or any(hosted.engine.has_work() for hosted in self.engines.values())

    def room(self) -> int:
        """Requests this worker may take now: GENERATION_MAX_SEQUENCES over all its engines, less those it holds."""
        return max(0, int(self.engine_options["max_sequences"]) - len(self.live))

    def shutdown(self) -> None:
        """Worker stopping: every live sequence ends with a 503, pushed in a last round trip."""
        for live in list(self.live.values()):
            self._finish(live, Refused(live.request_id, 503, "The worker generating this request is stopping."))
        with contextlib.suppress(redis.RedisError):
            self.exchange(pop=False)
        self.engines.clear()

    # -- one step -----------------------------------------------------------------------------

    def step(self) -> None:
        """One decoding step of every engine with work; their outputs become events in the outbox."""
        now = time.time()
        for version_id, hosted in list(self.engines.items()):
            if not hosted.engine.has_work():
                continue
            self._expire_waiting(hosted, now)
            try:
                with hosted.model.lock:
                    outputs = hosted.engine.step()
            except Exception as exc:
                logger.exception("the engine of %s v%s failed; dropped", hosted.model.model_name, hosted.model.version)
                message = (
                    f"The generation engine of {hosted.model.model_name!r} v{hosted.model.version} failed: "
                    f"{exception_summary(exc)}"
                )
                for live in list(hosted.sequences.values()):
                    self._finish(live, Refused(live.request_id, 500, message))
                del self.engines[version_id]
                continue
            for output in outputs:
                self._output(hosted, output)
        self.steps += 1

    def _output(self, hosted: Hosted, output: StepOutput) -> None:
        live = hosted.sequences.get(output.sequence_id)
        if live is None:  # ended already (its deadline passed while it waited)
            return
        event = Output(
            request_id=live.request_id,
            text=output.text,
            token_ids=list(output.token_ids),
            finish_reason=output.finish_reason.value if output.finish_reason is not None else None,
            completion_tokens=output.completion_tokens,
            logprobs=list(output.logprobs) if output.logprobs is not None else None,
        )
        if output.finished:
            self._finish(live, event)
        else:
            self._send(live.reply_to, event)

    def _expire_waiting(self, hosted: Hosted, now: float) -> None:
        """Sequences still waiting for room in the engine past their deadline end with a 504."""
        for sequence in list(hosted.engine.waiting):
            live = hosted.sequences.get(sequence.id)
            if live is not None and live.deadline <= now:
                hosted.engine.cancel(sequence.id)
                self._finish(live, Refused(live.request_id, 504, "The request waited for the model past its deadline."))

    # -- the round trip ---------------------------------------------------------------------------

    def exchange(self, *, pop: bool = True) -> tuple[list[bytes], list[str]]:
        """Push the outbox (one StepEvents per gateway) and pop cancellations and new requests, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        sent_at = time.time()
        for reply_to, events in self.outbox.items():
            pipe.lpush(reply_to, StepEvents(self.identity, sent_at, events).encode())
            pipe.expire(reply_to, STREAM_TTL_SECONDS)
        pushed = 2 * len(self.outbox)
        room = self.room() if pop else 0
        if pop:
            pipe.rpop(self.cancel_key, MAX_CANCELS)
            if room:
                for key in self.keys:
                    pipe.rpop(key, room)
        if not pipe:
            return [], []
        results = pipe.execute()
        self.outbox = {}
        if not pop:
            return [], []
        cancels = [raw.decode() for raw in results[pushed] or []]
        requests = [raw for popped in results[pushed + 1 :] if popped for raw in popped]
        return requests, cancels

    def _send(self, reply_to: str, event: Event) -> None:
        self.outbox.setdefault(reply_to, []).append(event)

    def _finish(self, live: Live, event: Event) -> None:
        """The request's last event: it leaves the loop's books."""
        self._send(live.reply_to, event)
        self.live.pop(live.request_id, None)
        hosted = self.engines.get(live.version_id)
        if hosted is not None:
            hosted.sequences.pop(live.sequence_id, None)

    # -- admission ----------------------------------------------------------------------------------

    def take(self, raw: bytes) -> None:
        """Admit one popped request: it joins its model's engine (Accepted) or is refused with a status."""
        try:
            request = GenerateRequest.decode(raw)
        except WireError as exc:
            # A malformed message names no reply list we could trust: its sender times out.
            logger.error("dropped a malformed generation request (%d bytes): %s", len(raw), exc)
            return
        if request.id in self.live:
            logger.warning("dropped a second copy of generation request %s", request.id)
            return
        try:
            event = self._admit(request)
        except Exception as exc:  # one request's failure (a model that fails its warm-up…) ends only that request
            logger.exception("generation request %s could not be admitted", request.id)
            event = Refused(request.id, 500, f"The worker could not start the request: {exception_summary(exc)}")
        self._send(request.reply_to, event)

    def _admit(self, request: GenerateRequest) -> Event:
        now = time.time()
        if request.deadline <= now:
            return Refused(request.id, 504, "The request waited in the queue past its deadline.")
        try:
            hosted = self._hosted(request.version_id)
        except ModelUnavailable as exc:
            return Refused(request.id, 503, f"This worker cannot serve the model: {exc}")
        except ValueError as exc:
            return Refused(request.id, 400, str(exc))
        model = hosted.model
        runtime: TextRuntime = model.runtime  # type: ignore[assignment]  # a generative model is a text one
        with model.lock:
            try:
                prompt_ids = self._prompt_ids(model, runtime, request)
                params = _sampling(request.params)
            except ValueError as exc:
                return Refused(request.id, 400, str(exc))
            try:
                sequence_id = hosted.engine.submit(GenerationRequest(prompt_ids, params))
            except EngineFull as exc:
                return Refused(request.id, 503, f"No room for the request on this worker: {exc}")
            except ValueError as exc:
                return Refused(request.id, 400, str(exc))
        live = Live(request.id, request.reply_to, request.version_id, sequence_id, request.deadline)
        self.live[request.id] = live
        hosted.sequences[sequence_id] = live
        return Accepted(request.id, len(prompt_ids), max(0.0, now - request.sent_at) * 1000)

    def _prompt_ids(self, model: LoadedModel, runtime: TextRuntime, request: GenerateRequest) -> list[int]:
        """The prompt's tokens: the text as the tokenizer reads it, or the messages through the chat template."""
        tokenizer = runtime.tokenizer
        if request.messages is None:
            return list(tokenizer(request.prompt or "")["input_ids"])
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"Model {model.model_name!r} v{model.version} has no chat template: use /v1/completions with a prompt."
            )
        try:
            text = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:
            raise ValueError(f"The model's chat template failed on these messages: {exception_summary(exc)}") from exc
        # The template writes the special tokens (a BOS) itself, as transformers' own chat path reads it.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _hosted(self, version_id: int) -> Hosted:
        """The engine of a version, created on first use; ValueError when the version does not generate."""
        model = model_cache().get(version_id)
        hosted = self.engines.get(version_id)
        if hosted is not None and (hosted.model is model or not hosted.idle()):
            # A busy engine keeps the model it started with even if the cache reloaded it meanwhile.
            return hosted
        if not model.generative:
            kind = model.task or "tensor"
            raise ValueError(
                f"Model {model.model_name!r} v{model.version} is a {kind} model, not a text-generation one."
            )
        runtime: TextRuntime = model.runtime  # type: ignore[assignment]
        hosted = Hosted(model, Engine(runtime.module, runtime.tokenizer, **self.engine_options))
        self.engines[version_id] = hosted
        logger.info("generation engine for %s v%s started", model.model_name, model.version)
        return hosted

    def cancel(self, request_id: str) -> None:
        """A gateway's client went away: the sequence leaves its engine at the next step."""
        live = self.live.get(request_id)
        hosted = self.engines.get(live.version_id) if live is not None else None
        if live is None or hosted is None:
            return
        if not hosted.engine.cancel(live.sequence_id):
            self._finish(live, Output(request_id, "", [], "cancelled", 0))

    # -- housekeeping --------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        now = time.time()
        if now - self._last_heartbeat < HEARTBEAT_SECONDS:
            return
        self._last_heartbeat = now
        cached = {model.version_id: model for model in model_cache().loaded()}
        for version_id, hosted in list(self.engines.items()):
            if hosted.idle() and cached.get(version_id) is not hosted.model:
                # Its model left the cache (evicted, invalidated): let its memory go.
                del self.engines[version_id]
                logger.info("generation engine for %s v%s dropped", hosted.model.model_name, hosted.model.version)
        try:
            telemetry.generation_load(self.identity, [self._load(hosted) for hosted in self.engines.values()])
        except Exception:  # telemetry must never stop generation (logged once, not every heartbeat)
            if not self._load_report_failed:
                logger.exception("the generation load report failed (further failures are not logged)")
            self._load_report_failed = True

    def _load(self, hosted: Hosted) -> telemetry.GenerationLoad:
        stats = hosted.engine.stats()
        return telemetry.GenerationLoad(
            version_id=hosted.model.version_id,
            model=hosted.model.model_name,
            version=hosted.model.version,
            running=stats["running"] + stats["prefilling"],
            waiting=stats["waiting"],
            cached_tokens=stats["cached_tokens"],
            reserved_tokens=stats["reserved_tokens"],
            budget_tokens=hosted.engine.max_tokens,
        )


def _sampling(params: dict[str, Any]) -> SamplingParams:
    """The request's sampling settings (the gateway checked them; ValueError names a bad one all the same)."""
    values = {name: params[name] for name in PARAM_NAMES if params.get(name) is not None}
    values.setdefault("max_tokens", settings.GENERATION_MAX_TOKENS_DEFAULT)
    stop = values.get("stop")
    if isinstance(stop, str):
        values["stop"] = (stop,)
    elif isinstance(stop, list | tuple):
        values["stop"] = tuple(stop)
    for name in ("temperature", "top_p"):
        if isinstance(values.get(name), int) and not isinstance(values[name], bool):
            values[name] = float(values[name])
    try:
        return SamplingParams(**values)
    except TypeError as exc:
        raise ValueError(f"bad sampling parameters: {exc}") from None


__all__ = ["GenerationLoop", "Hosted", "Live"]
