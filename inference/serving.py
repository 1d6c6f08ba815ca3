"""The online serving loop that runs inside every Celery worker process.

Celery workers keep running Celery tasks (validation, batch jobs); beside them, each
worker process started with an inference queue runs one thread that pops coalesced
prediction batches from Redis, runs them through the model cache (stacking everything
that is waiting for the same model into one forward pass), and pushes the outputs to the
reply list of the gateway process that asked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from typing import Any, cast

import numpy as np
import redis
from celery import signals
from django.conf import settings

from inference import telemetry, wire
from inference.cache import LoadedModel, ModelUnavailable, model_cache

logger = logging.getLogger(__name__)

# Messages popped in one go after the blocking pop: what is waiting gets batched together.
MAX_DRAIN = 64
HEARTBEAT_SECONDS = 2.0
# Celery queues that are not prediction queues.
CONTROL_QUEUES = {"default", "celery"}

_serve_queues: list[str] = []
_loop: ServingLoop | None = None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ServingLoop(threading.Thread):
    """Pops batches from the prediction queues this worker consumes and answers them."""

    def __init__(self, queues: list[str]) -> None:
        super().__init__(name="maas-serving", daemon=True)
        self.queues = queues
        self.keys = [wire.queue_key(queue) for queue in queues]
        self.redis = redis.Redis.from_url(wire.redis_url(), socket_timeout=10, health_check_interval=30)
        self.stopping = threading.Event()
        self.identity = worker_id()
        self._last_heartbeat = 0.0

    def run(self) -> None:
        logger.info("serving predictions from %s as %s", ", ".join(self.queues), self.identity)
        # Replies of the last batch ride in the same round trip as the next pop, so a busy
        # worker pays one Redis round trip per cycle; an idle one blocks in BRPOP.
        unsent: list[tuple[dict[str, Any], dict[str, Any]]] = []
        while not self.stopping.is_set():
            try:
                self._heartbeat()
                messages = self._exchange(unsent)
                unsent = []
                if not messages:
                    item = self.redis.brpop(self.keys, timeout=1)
                    if item is None:
                        continue
                    messages = [cast(bytes, item[1])]
                unsent = self.handle([wire.unpack(raw) for raw in messages])
            except redis.RedisError as exc:
                logger.warning("serving loop lost Redis (%s); retrying", exc)
                time.sleep(1)
            except Exception:  # the loop must outlive any single bad batch
                logger.exception("serving loop error")
        with contextlib.suppress(redis.RedisError):
            self._exchange(unsent, pop=False)
            self.redis.hdel(wire.WORKERS_KEY, self.identity)

    def _exchange(self, replies: list[tuple[dict[str, Any], dict[str, Any]]], *, pop: bool = True) -> list[bytes]:
        """Push replies to their askers and pop what waits on our queues, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for message, reply in replies:
            pipe.lpush(message["r"], wire.pack(reply))
            pipe.expire(message["r"], wire.REPLY_TTL_SECONDS)
        if pop:
            for key in self.keys:
                pipe.rpop(key, MAX_DRAIN)
        if not pipe:
            return []
        results = pipe.execute()
        popped = results[2 * len(replies) :]
        return [raw for batch in popped if batch for raw in batch]

    def _heartbeat(self) -> None:
        now = time.time()
        if now - self._last_heartbeat < HEARTBEAT_SECONDS:
            return
        loaded = [model.version_id for model in model_cache().loaded()]
        self.redis.hset(wire.WORKERS_KEY, self.identity, wire.pack({"q": self.queues, "t": now, "m": loaded}))
        telemetry.worker_heartbeat(self.identity, len(loaded))
        self._last_heartbeat = now

    def handle(self, messages: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Answer a set of messages, one forward per model version where it can batch.

        Replies of every version but the last are pushed at once; the last ones are
        returned for the caller to push with its next pop.
        """
        received = time.time()
        by_version: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for message in messages:
            by_version[message["v"]].append(message)
        answered: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for version_id, group in by_version.items():
            if answered:
                self._exchange(answered, pop=False)
            replies = self._run_version(version_id, group, received)
            answered = list(zip(group, replies, strict=True))
        return answered

    def _run_version(self, version_id: int, group: list[dict[str, Any]], received: float) -> list[dict[str, Any]]:
        waits = [max(0.0, received - message["s"]) * 1000 for message in group]
        live = [m for m in group if m["d"] > received]
        expired = {id(m) for m in group} - {id(m) for m in live}
        outcomes: dict[int, list[dict[str, Any]]] = {}
        started = time.perf_counter()
        rows = 0
        if live:
            try:
                model = model_cache().get(version_id)
            except ModelUnavailable as exc:
                error = {"err": f"This worker cannot serve the model: {exc}", "s": 503}
                outcomes = {id(m): [error] * len(m["q"]) for m in live}
            else:
                requests = [request for m in live for request in m["q"]]
                results, rows = self._predict(model, [wire.unpack_tensors(r) for r in requests])
                cursor = 0
                for message in live:
                    outcomes[id(message)] = results[cursor : cursor + len(message["q"])]
                    cursor += len(message["q"])
        compute_ms = (time.perf_counter() - started) * 1000
        replies = []
        for message, wait in zip(group, waits, strict=True):
            if id(message) in expired:
                answers = [{"err": "The request waited in the queue past its deadline.", "s": 504}] * len(message["q"])
            else:
                answers = outcomes[id(message)]
            replies.append(
                {"b": message["b"], "o": answers, "qt": wait, "ct": compute_ms, "bs": rows, "w": self.identity}
            )
        return replies

    def _predict(self, model: LoadedModel, requests: list[wire.Tensors]) -> tuple[list[dict[str, Any]], int]:
        """Outputs for each request: stacked into batches of at most max_batch_size rows when the model batches."""
        if not model.batching or len(requests) == 1:
            return [self._one(model, request) for request in requests], max(wire.rows(r) for r in requests)
        answers: list[dict[str, Any]] = []
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

    def _stacked(self, model: LoadedModel, chunk: list[wire.Tensors]) -> list[dict[str, Any]]:
        if len(chunk) == 1:
            return [self._one(model, chunk[0])]
        try:
            stacked = {name: np.concatenate([r[name] for r in chunk]) for name in model.input_names}
            outputs = model.predict(stacked)
        except (ValueError, RuntimeError):
            # Requests that cannot share a forward (different sequence lengths, or one that
            # makes the model raise) are run one by one so each gets its own answer.
            return [self._one(model, request) for request in chunk]
        answers, start = [], 0
        for request in chunk:
            end = start + wire.rows(request)
            answers.append({"ok": wire.pack_tensors({name: array[start:end] for name, _, array in outputs})})
            start = end
        return answers

    def _one(self, model: LoadedModel, request: wire.Tensors) -> dict[str, Any]:
        try:
            outputs = model.predict(request)
        except Exception as exc:
            message = str(exc).strip().splitlines()[-1][:400] if str(exc).strip() else ""
            return {
                "err": f"Model {model.model_name!r} v{model.version} raised {type(exc).__name__} "
                f"during the forward pass: {message}",
                "s": 422,
            }
        return {"ok": wire.pack_tensors({name: array for name, _, array in outputs})}


def serving_start(queues: list[str]) -> None:
    """Start this process's serving loop (once)."""
    global _loop
    if _loop is None and queues and settings.INFERENCE_REDIS_URL:
        _loop = ServingLoop(queues)
        _loop.start()


def serving_stop() -> None:
    global _loop
    if _loop is not None:
        _loop.stopping.set()
        _loop.join(timeout=5)
        _loop = None


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
