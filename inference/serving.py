"""The online serving loop that runs inside every Celery worker process.

Celery workers keep running Celery tasks (validation, batch jobs); beside them, each
worker process started with an inference queue runs one thread that pops coalesced
prediction batches from Redis, runs them through the model cache (stacking everything
that is waiting for the same model into one forward pass), and pushes the outputs to the
reply list of the gateway process that asked. A second thread, the generation loop
(inference.generation.worker), serves the same queues' generation requests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import threading
import time
from collections import defaultdict
from typing import Any, cast

import numpy as np
import redis
from celery import signals
from django.conf import settings

from core import redis as shared_redis
from inference import telemetry, wire
from inference.cache import LoadedModel, ModelUnavailable, model_cache
from inference.generation.worker import GenerationLoop
from inference.runtimes import TextInputError, hf_libraries, token_rows_trim
from inference.sandbox.supervisor import ServingSupervisor
from inference.services import exception_summary
from inference.wire import Answer, BatchReply, BatchRequest, Failure, Outputs

logger = logging.getLogger(__name__)

# Messages popped in one go after the blocking pop: what is waiting gets batched together.
MAX_DRAIN = 64
# Celery queues that are not prediction queues.
CONTROL_QUEUES = {"default", "celery"}

_serve_queues: list[str] = []
_loop: ServingLoop | None = None
_generation: GenerationLoop | None = None
_supervisor: ServingSupervisor | None = None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ClaimWriter(threading.Thread):
    """Writes which batches the serving loop took (wire.TAKEN_KEY) from a thread of its own.

    A gateway waiting on one of them then knows whose death leaves it unanswered, even when the
    worker dies before its next heartbeat: it answers 503 at once instead of 504 at the deadline,
    while batches nobody took stay queued for the live workers. The loop hands the ids over and
    computes at once: the write costs it no Redis round trip (a measured 0.3 ms per request at
    c=1 when it was written in line). Under load only the latest pop is written (each write
    replaces the last), so a busy worker writes once per round trip of this thread, not per pop.
    """

    def __init__(self, identity: str) -> None:
        super().__init__(name="maas-serving-claims", daemon=True)
        self.identity = identity
        self.redis = shared_redis.client(timeout=10)
        self.taken: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def took(self, batches: list[BatchRequest]) -> None:
        if batches:
            self.taken.put(wire.TAKEN_SEPARATOR.join(message.batch_id for message in batches))

    def stop(self) -> None:
        """Write what is left, then forget this worker's record."""
        self.taken.put(None)
        self.join(10)
        with contextlib.suppress(redis.RedisError):
            self.redis.hdel(wire.TAKEN_KEY, self.identity)

    def run(self) -> None:
        stopping = False
        while not stopping:
            pending = [self.taken.get()]
            with contextlib.suppress(queue.Empty):
                while pending[-1] is not None:
                    pending.append(self.taken.get_nowait())
            stopping = pending[-1] is None
            # Only the newest pop matters: each write replaces the last.
            latest = next((ids for ids in reversed(pending) if ids is not None), None)
            if latest is None:
                continue
            try:
                self.redis.hset(wire.TAKEN_KEY, self.identity, latest)
            except redis.RedisError as exc:
                # The batches are computed all the same: only a death during them would go unseen.
                logger.warning("could not record the batches taken (%s)", exc)


class ServingLoop(threading.Thread):
    """Pops batches from the prediction queues this worker consumes and answers them."""

    def __init__(self, queues: list[str]) -> None:
        super().__init__(name="maas-serving", daemon=True)
        self.queues = queues
        self.keys = [wire.queue_key(queue) for queue in queues]
        # Its own read timeout: longer than the one-second BRPOP below, short enough to
        # notice a Redis that stopped answering.
        self.redis = shared_redis.client(timeout=10)
        self.stopping = threading.Event()
        self.identity = worker_id()

    def run(self) -> None:
        # A serving loop may be asked for a text model at any time: transformers (which a process
        # no longer imports at startup, seconds of it) is imported before it serves, not within
        # the first text request's deadline.
        hf_libraries()
        logger.info("serving predictions from %s as %s", ", ".join(self.queues), self.identity)
        # The heartbeat has a thread of its own: a worker busy loading a model or computing a
        # long batch is alive (and says what it loads), and one that died is seen within
        # INFERENCE_WORKER_TTL_SECONDS, since nothing writes its heartbeat any more.
        self.beats = shared_redis.named_client(f"{wire.WORKER_CLIENT_PREFIX}{self.identity}")
        threading.Thread(target=self._beat, name="maas-serving-heartbeat", daemon=True).start()
        claims = ClaimWriter(self.identity)
        claims.start()
        # Replies of the last batch ride in the same round trip as the next pop, so a busy
        # worker pays one Redis round trip per cycle; an idle one blocks in BRPOP.
        unsent: list[tuple[BatchRequest, BatchReply]] = []
        while not self.stopping.is_set():
            try:
                messages = self._exchange(unsent)
                unsent = []
                if not messages:
                    item = self.redis.brpop(self.keys, timeout=1)
                    if item is None:
                        continue
                    messages = [cast(bytes, item[1])]
                decoded = _decoded(messages)
                claims.took(decoded)
                unsent = self.handle(decoded)
            except redis.RedisError as exc:
                logger.warning("serving loop lost Redis (%s); retrying", exc)
                time.sleep(1)
            except Exception:  # the loop must outlive any single bad batch
                logger.exception("serving loop error")
        with contextlib.suppress(redis.RedisError):
            self._exchange(unsent, pop=False)
            self.redis.hdel(wire.WORKERS_KEY, self.identity)
        claims.stop()

    def _exchange(self, replies: list[tuple[BatchRequest, BatchReply]], *, pop: bool = True) -> list[bytes]:
        """Push replies to their askers and pop what waits on our queues, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for message, reply in replies:
            pipe.lpush(message.reply_to, reply.encode())
            pipe.expire(message.reply_to, wire.REPLY_TTL_SECONDS)
        if pop:
            for key in self.keys:
                pipe.rpop(key, MAX_DRAIN)
        if not pipe:
            return []
        results = pipe.execute()
        popped = results[2 * len(replies) :]
        return [raw for batch in popped if batch for raw in batch]

    def _beat(self) -> None:
        """Write this worker's heartbeat every INFERENCE_HEARTBEAT_SECONDS until the loop stops."""
        while not self.stopping.is_set():
            try:
                self._heartbeat()
            except redis.RedisError as exc:
                logger.warning("serving heartbeat lost Redis (%s); retrying", exc)
            except Exception:  # a heartbeat that stops makes a serving worker look dead: keep beating
                logger.exception("serving heartbeat failed; retrying")
            self.stopping.wait(settings.INFERENCE_HEARTBEAT_SECONDS)

    def _heartbeat(self) -> None:
        cache = model_cache()
        loaded = [model.version_id for model in cache.loaded()]
        beat = wire.Heartbeat(self.queues, time.time(), loaded, cache.loading())
        self.beats.hset(wire.WORKERS_KEY, self.identity, beat.encode())
        telemetry.worker_heartbeat(self.identity, len(loaded))

    def handle(self, messages: list[BatchRequest]) -> list[tuple[BatchRequest, BatchReply]]:
        """Answer a set of messages, one forward per model version where it can batch.

        Replies of every version but the last are pushed at once; the last ones are
        returned for the caller to push with its next pop.
        """
        received = time.time()
        by_version: dict[int, list[BatchRequest]] = defaultdict(list)
        for message in messages:
            by_version[message.version_id].append(message)
        answered: list[tuple[BatchRequest, BatchReply]] = []
        for version_id, group in by_version.items():
            if answered:
                self._exchange(answered, pop=False)
            replies = self._run_version(version_id, group, received)
            answered = list(zip(group, replies, strict=True))
        return answered

    def _run_version(self, version_id: int, group: list[BatchRequest], received: float) -> list[BatchReply]:
        live = [m for m in group if m.deadline > received]
        outcomes: dict[int, list[Answer]] = {}
        started = time.perf_counter()
        rows = 0
        if live:
            try:
                model = model_cache().get(version_id)
            except ModelUnavailable as exc:
                error = Failure(f"This worker cannot serve the model: {exc}", 503)
                outcomes = {id(m): [error] * len(m.requests) for m in live}
            else:
                requests = [request for m in live for request in m.requests]
                if model.text:
                    parameters = [m.parameters_of(i) for m in live for i in range(len(m.requests))]
                    results, rows = self._predict_texts(model, requests, parameters)
                else:
                    results, rows = self._predict(model, requests)
                cursor = 0
                for message in live:
                    outcomes[id(message)] = results[cursor : cursor + len(message.requests)]
                    cursor += len(message.requests)
        compute_ms = (time.perf_counter() - started) * 1000
        late = Failure("The request waited in the queue past its deadline.", 504)
        replies = []
        for message in group:
            replies.append(
                BatchReply(
                    batch_id=message.batch_id,
                    answers=outcomes.get(id(message)) or [late] * len(message.requests),
                    queue_ms=max(0.0, received - message.sent_at) * 1000,
                    compute_ms=compute_ms,
                    batch_rows=rows,
                    worker=self.identity,
                )
            )
        return replies

    def _predict(self, model: LoadedModel, requests: list[wire.Tensors]) -> tuple[list[Answer], int]:
        """Outputs for each request: stacked into batches of at most max_batch_size rows when the model batches."""
        if not model.batching or len(requests) == 1:
            return [self._one(model, request) for request in requests], max(wire.rows(r) for r in requests)
        answers: list[Answer] = []
        chunk: list[wire.Tensors] = []
        largest = 0
        for request in requests:
            if chunk and sum(wire.rows(r) for r in chunk) + wire.rows(request) > model.max_batch_size:
                answers += self._stacked(model, chunk)
                largest = max(largest, sum(wire.rows(r) for r in chunk))
                chunk = []
            chunk.append(request)
        answers += self._stacked(model, chunk)
        return answers, max(largest, sum(wire.rows(r) for r in chunk))

    def _stacked(self, model: LoadedModel, chunk: list[wire.Tensors]) -> list[Answer]:
        if len(chunk) == 1:
            return [self._one(model, chunk[0])]
        try:
            stacked = {name: np.concatenate([r[name] for r in chunk]) for name in model.input_names}
            outputs = model.predict(stacked)
        except (ValueError, RuntimeError):
            # Requests that cannot share a forward (different sequence lengths, or one that
            # makes the model raise) are run one by one so each gets its own answer.
            return [self._one(model, request) for request in chunk]
        answers: list[Answer] = []
        start = 0
        for request in chunk:
            end = start + wire.rows(request)
            answers.append(Outputs({name: array[start:end] for name, _, array in outputs}))
            start = end
        return answers

    def _predict_texts(
        self, model: LoadedModel, requests: list[wire.Tensors], parameters: list[dict[str, Any]]
    ) -> tuple[list[Answer], int]:
        """Outputs for each text request: one padding-aware call per set of identical parameters.

        The texts of a group are concatenated (the runtime buckets them into forwards of at
        most max_batch_size rows) and the rows split back per request; a group that fails
        is run request by request, so one bad text fails only its own request (400).
        """
        groups: dict[str, list[int]] = defaultdict(list)
        for index, params in enumerate(parameters):
            groups[_parameters_key(params)].append(index)
        answers: list[Answer | None] = [None] * len(requests)
        largest = 0
        for indices in groups.values():
            name = model.input_names[0]
            sizes = [requests[i][name].size for i in indices]
            largest = max(largest, min(sum(sizes), model.max_batch_size))
            try:
                texts = np.concatenate([requests[i][name].reshape(-1) for i in indices])
                outputs = model.predict({name: texts}, parameters[indices[0]])
            except Exception as exc:
                if len(indices) == 1:
                    answers[indices[0]] = _failure(model, exc)
                else:
                    for i in indices:
                        answers[i] = self._one(model, requests[i], parameters[i])
                continue
            start = 0
            for i, size in zip(indices, sizes, strict=True):
                rows = {output: array[start : start + size] for output, _, array in outputs}
                answers[i] = Outputs(token_rows_trim(rows))
                start += size
        return cast(list[Answer], answers), largest

    def _one(self, model: LoadedModel, request: wire.Tensors, parameters: dict[str, Any] | None = None) -> Answer:
        try:
            outputs = model.predict(request, parameters)
        except Exception as exc:
            return _failure(model, exc)
        return Outputs({name: array for name, _, array in outputs})


def _failure(model: LoadedModel, exc: Exception) -> Failure:
    """A request's failure: 400 for a text the caller must fix, 422 when the model raised."""
    if isinstance(exc, TextInputError):
        return Failure(str(exc), 400)
    kind = type(exc).__name__
    # exception_summary names the type once, even when the message already starts with it.
    message = exception_summary(exc).removeprefix(kind).removeprefix(":").strip()
    return Failure(
        f"Model {model.model_name!r} v{model.version} raised {kind} during the forward pass: {message}",
        422,
    )


def _parameters_key(parameters: dict[str, Any]) -> str:
    """Requests whose parameters give the same key can share a forward (the values are JSON from the gateway)."""
    return json.dumps(parameters, sort_keys=True, default=repr) if parameters else ""


def _decoded(messages: list[bytes]) -> list[BatchRequest]:
    """The well-formed batch requests among `messages`; the others are logged and dropped.

    A malformed message names no reply list we could trust, so its sender times out (504).
    """
    decoded = []
    for raw in messages:
        try:
            decoded.append(BatchRequest.decode(raw))
        except wire.WireError as exc:
            logger.error("dropped a malformed prediction message (%d bytes): %s", len(raw), exc)
    return decoded


def serving_start(queues: list[str]) -> None:
    """Start this process's serving and generation loops (once): in a sandboxed model host
    (inference.sandbox) by default, in this process with MODEL_SANDBOX=off."""
    global _loop, _generation, _supervisor
    if _loop is not None or _supervisor is not None or not queues or not settings.INFERENCE_REDIS_URL:
        return
    if settings.MODEL_SANDBOX != "off":
        _supervisor = ServingSupervisor(queues)
        _supervisor.start()
    else:
        _loop = ServingLoop(queues)
        _loop.start()
        _generation = GenerationLoop(queues, _loop.identity)
        _generation.start()


def serving_stop() -> None:
    """Stop both loops: live generations end with a 503, the last replies are pushed."""
    global _loop, _generation, _supervisor
    if _supervisor is not None:
        _supervisor.stop()
        _supervisor = None
    loops = [loop for loop in (_generation, _loop) if loop is not None]
    for loop in loops:
        loop.stopping.set()
    for loop in loops:
        loop.join(timeout=5)
    _loop = _generation = None


@signals.celeryd_after_setup.connect
def _remember_queues(sender: str, instance: Any, **kwargs: Any) -> None:
    """Record, before the pool forks, which prediction queues this worker was started with."""
    configured = [q for q in os.environ.get("INFERENCE_SERVE_QUEUES", "").split(",") if q]
    consumed = list(instance.app.amqp.queues.consume_from or instance.app.amqp.queues)
    _serve_queues[:] = configured or [name for name in consumed if name not in CONTROL_QUEUES]


@signals.worker_process_init.connect
def _start_in_pool_process(**kwargs: Any) -> None:
    serving_start(_serve_queues)


@signals.worker_ready.connect
def _start_in_solo_worker(sender: Any, **kwargs: Any) -> None:
    # Pools that do not fork (solo, threads) never send worker_process_init.
    if type(sender.pool).__module__.endswith(("solo", "thread")):
        serving_start(_serve_queues)


@signals.worker_process_shutdown.connect
def _stop(**kwargs: Any) -> None:
    serving_stop()
