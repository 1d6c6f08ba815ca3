"""The gateway's side of text generation: requests out to the engines, their events back.

One `GenerationClient` per gateway process. It LPUSHes each `GenerateRequest` on its model's
queue with `reply_to` = its own stream list, and one reader task BRPOPs that list and hands
each event of each `StepEvents` to the queue of the request it belongs to. A `Generation` is
one request as its caller sees it:

    generation = await client.submit(target, prompt=..., messages=None, params={...})
    try:
        async for output in generation.outputs():
            ...
    finally:
        await generation.close()  # cancels it on its worker when it did not finish

Nothing waits forever: a request waits for a worker at most INFERENCE_TIMEOUT_SECONDS (then
it is taken back from the queue with LREM, or cancelled on the worker that took it meanwhile),
and a running one whose worker says nothing for GENERATION_STALL_SECONDS ends with an error.
Admission is checked before anything is queued: no live worker for the queue, or a backlog of
GENERATION_MAX_QUEUED requests, is a fast 503 with Retry-After. So is a model that a worker is
still loading (as its heartbeat says), as the /v2 gateway answers one: once the load has lasted
half the timeout, a request is refused at once; one that waited for it is refused at its
deadline (503 "loading", not 504); the load goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import redis
import redis.asyncio as aioredis
from django.conf import settings

from core import redis as shared_redis
from inference.generation.messages import (
    STREAM_TTL_SECONDS,
    Accepted,
    Event,
    GenerateRequest,
    Output,
    Refused,
    StepEvents,
    cancel_key,
    request_queue_key,
    stream_key,
)
from inference.routes import HttpError, Target
from inference.wire import WireError

logger = logging.getLogger(__name__)

# How long a request that a worker took just as its wait ran out may take to say so
# (its Accepted is then answered with a cancel) before the caller gets its 504 anyway.
ACCEPT_GRACE_SECONDS = 1.0
# Retry-After of an admission 503, in seconds: estimated from the queue waits this gateway saw.
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 1, 30
# An unknown request's events (its caller left) are answered with one cancel per this long.
ORPHAN_CANCEL_SECONDS = 1.0
# How often a stream waiting for its next event checks that its worker still lives.
DEATH_WATCH_SECONDS = 0.5


@dataclass
class _State:
    """What the reader task of one event loop shares with that loop's requests."""

    loop: asyncio.AbstractEventLoop
    reader: asyncio.Task[None] | None = None
    requests: dict[str, asyncio.Queue[tuple[str, Event]]] = field(default_factory=dict)
    cancelled: dict[str, float] = field(default_factory=dict)


class LoadingCheck(Protocol):
    """Raises HttpError 503 (Retry-After) while a worker loads the target's version: once the load has
    lasted half the timeout, or at once when `deadline` (a request that waited for it)."""

    def __call__(self, target: Target, *, deadline: bool = False) -> Awaitable[None]: ...


class GenerationClient:
    """One gateway process's generation requests and the reader of their events."""

    def __init__(
        self,
        gateway_id: str,
        live_queues: Callable[[str], Awaitable[set[str]]],
        live_workers: Callable[[], Awaitable[set[str]]] | None = None,
        loading_check: LoadingCheck | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self.stream = stream_key(gateway_id)
        self.live_queues = live_queues
        # The identities of live workers: a stream whose worker died is ended at once, not after the stall timer.
        self.live_workers = live_workers
        # Raises 503 "loading" for a version a worker is still loading (Gateway.loading_check).
        self.loading_check = loading_check
        self._state: _State | None = None
        # Smoothed queue wait (ms) per serving queue, from Accepted events: the Retry-After estimate.
        self.queue_wait_ms: dict[str, float] = {}

    # -- plumbing ------------------------------------------------------------------------
    def _started(self) -> _State:
        """This loop's state, with its reader running (a new loop, e.g. another test, starts afresh)."""
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            self._state = _State(loop)
        state = self._state
        if state.reader is None or state.reader.done():
            state.reader = loop.create_task(self._read(state))
        return state

    @property
    def in_flight(self) -> int:
        """Requests of this process waiting for or receiving events (0 once they all cleaned up)."""
        return len(self._state.requests) if self._state is not None else 0

    async def _read(self, state: _State) -> None:
        reader = shared_redis.async_client(timeout=None)
        while True:
            try:
                item = await reader.brpop([self.stream], timeout=1)
            except (redis.RedisError, OSError) as exc:
                # Running requests notice through their stall timer; keep trying.
                logger.warning("generation client lost Redis while reading events: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if item is None:
                continue
            try:
                step = StepEvents.decode(cast(bytes, item[1]))
            except WireError as exc:
                logger.error("generation client dropped malformed events: %s", exc)
                continue
            for event in step.events:
                queue = state.requests.get(event.request_id)
                if queue is not None:
                    queue.put_nowait((step.worker, event))
                elif _continues(event):
                    await self._cancel_orphan(state, step.worker, event.request_id)

    async def _cancel_orphan(self, state: _State, worker: str, request_id: str) -> None:
        """A request nobody waits for any more (its caller left, its wait ran out) still runs: stop it."""
        now = time.monotonic()
        for stale in [key for key, at in state.cancelled.items() if now - at > 60]:
            del state.cancelled[stale]
        if now - state.cancelled.get(request_id, 0.0) < ORPHAN_CANCEL_SECONDS:
            return
        state.cancelled[request_id] = now
        await _cancel_push(worker, request_id)

    # -- requests ------------------------------------------------------------------------
    async def admit(self, target: Target) -> None:
        """Refuse 503 (with Retry-After) a request that no worker serves or that would queue too long."""
        client = shared_redis.async_client()
        if target.queue not in await self.live_queues(target.queue):
            raise HttpError(
                503,
                f"No live worker serves queue {target.queue!r} for model {target.model_name!r} "
                "(start one: celery -A portal worker -Q ...).",
                {"Retry-After": str(RETRY_AFTER_MAX)},
            )
        if self.loading_check is not None:
            await self.loading_check(target)
        try:
            backlog = int(await client.llen(request_queue_key(target.queue)))
        except (redis.RedisError, OSError) as exc:
            raise HttpError(503, f"The generation broker is unavailable: {exc}") from None
        limit = settings.GENERATION_MAX_QUEUED
        if backlog >= limit:
            raise HttpError(
                503,
                f"Model {target.model_name!r} has {backlog} requests waiting for a worker, the limit "
                f"(GENERATION_MAX_QUEUED) is {limit}: retry shortly.",
                {"Retry-After": str(self.retry_after(target.queue))},
            )

    def retry_after(self, queue: str) -> int:
        """Whole seconds a refused caller should wait: about what a queued request waited lately."""
        waited = self.queue_wait_ms.get(queue, 0.0) / 1000
        return max(RETRY_AFTER_MIN, min(RETRY_AFTER_MAX, math.ceil(waited)))

    async def submit(
        self, target: Target, *, prompt: str | None, messages: list[dict[str, str]] | None, params: dict[str, Any]
    ) -> Generation:
        """Queue one request and wait until a worker accepts it (or refuses it, or the wait runs out).

        Raises HttpError: 503 (admission, broker), the worker's refusal (400 over context, ...),
        504 when no worker took it within INFERENCE_TIMEOUT_SECONDS.
        """
        await self.admit(target)
        state = self._started()
        now = time.time()
        timeout = settings.INFERENCE_TIMEOUT_SECONDS
        request = GenerateRequest(uuid.uuid4().hex, self.stream, target.version_id, now, now + timeout, prompt,
                                  messages, params)  # fmt: skip
        generation = Generation(self, state, target, request)
        state.requests[request.id] = generation.queue
        try:
            await generation.start(timeout)
        except BaseException:
            # Not accepted (refused, timed out, or the caller left while it waited): forget it.
            await generation.close()
            raise
        return generation

    def _queue_waited(self, queue: str, ms: float) -> None:
        previous = self.queue_wait_ms.get(queue)
        self.queue_wait_ms[queue] = ms if previous is None else 0.8 * previous + 0.2 * ms


class Generation:
    """One request from its queueing to its last event; `close()` always (it cancels what still runs)."""

    def __init__(self, client: GenerationClient, state: _State, target: Target, request: GenerateRequest) -> None:
        self.client = client
        self.state = state
        self.target = target
        self.request = request
        self.raw = request.encode()
        self.queue: asyncio.Queue[tuple[str, Event]] = asyncio.Queue()
        self.worker: str | None = None
        self.accepted: Accepted | None = None
        self.finished = False
        self.closed = False
        # Whether the worker may still have the request (taken from the queue, not finished).
        self.queued = False

    @property
    def id(self) -> str:
        return self.request.id

    async def start(self, timeout: float) -> None:
        try:
            await shared_redis.async_client().lpush(request_queue_key(self.target.queue), self.raw)
        except (redis.RedisError, OSError) as exc:
            raise HttpError(503, f"The generation broker is unavailable: {exc}") from None
        self.queued = True
        if await self._accepted_within(timeout):
            return
        taken_back = await self._take_back()
        # The model still loads (maybe for this very request): 503 "loading", a retry will do.
        await self._loading_check(deadline=True)
        # It was still in the queue (taken back now): nothing ran.
        if taken_back:
            raise HttpError(
                504,
                f"No worker took the request for model {self.target.model_name!r} v{self.target.version} within "
                f"{timeout:g}s (INFERENCE_TIMEOUT_SECONDS): workers busy or stopped.",
                {"Retry-After": str(self.client.retry_after(self.target.queue))},
            )
        # A worker took it as the wait ran out: give it a moment to say so, then cancel it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACCEPT_GRACE_SECONDS):
                await self._accepted()
        raise HttpError(
            504,
            f"The request for model {self.target.model_name!r} v{self.target.version} waited {timeout:g}s "
            "(INFERENCE_TIMEOUT_SECONDS) before a worker took it; it was cancelled.",
        )

    async def _accepted_within(self, timeout: float) -> bool:
        """Wait up to `timeout` for the request's Accepted. A model still loading is waited for (the
        load may end in time); at the deadline the caller answers 503 "loading" if it still loads."""
        try:
            async with asyncio.timeout(timeout):
                await self._accepted()
            return True
        except TimeoutError:
            return False

    async def _loading_check(self, *, deadline: bool = False) -> None:
        if self.client.loading_check is not None:
            await self.client.loading_check(self.target, deadline=deadline)

    async def _accepted(self) -> None:
        """Wait for the request's Accepted (a Refused raises its error)."""
        while True:
            worker, event = await self.queue.get()
            self.worker = worker
            if isinstance(event, Accepted):
                self.accepted = event
                self.client._queue_waited(self.target.queue, event.queue_ms)
                return
            if isinstance(event, Refused):
                self.finished = True
                raise HttpError(event.status, event.message)
            # An Output before Accepted breaks the contract; keep it for outputs() rather than lose text.
            self.queue.put_nowait((worker, event))
            return

    async def _take_back(self) -> bool:
        """LREM the request's exact bytes: True if it was still queued (no worker has it)."""
        try:
            # redis-py's stubs type LREM's value as str; bytes go through unchanged.
            queue = request_queue_key(self.target.queue)
            removed = int(await shared_redis.async_client().lrem(queue, 1, cast(str, self.raw)))
        except (redis.RedisError, OSError) as exc:
            logger.warning("could not take back generation request %s: %s", self.id, exc)
            return False
        if removed:
            self.queued = False
        return bool(removed)

    async def outputs(self) -> AsyncIterator[Output]:
        """The request's outputs until the last (with a finish reason); HttpError on a refusal or a stall."""
        stall = settings.GENERATION_STALL_SECONDS
        while not self.finished:
            worker, event = await self._next_event(stall)
            self.worker = worker
            if isinstance(event, Refused):
                self.finished = True
                raise HttpError(event.status, event.message)
            if isinstance(event, Output):
                if event.finish_reason is not None:
                    self.finished = True
                yield event

    async def _next_event(self, stall: float) -> tuple[str, Event]:
        """The next event; 503 once the worker holding the request is seen dead, or after `stall` s of silence."""
        silent_until = time.monotonic() + stall
        while True:
            wait = min(DEATH_WATCH_SECONDS, silent_until - time.monotonic())
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    return await self.queue.get()
            except TimeoutError:
                pass
            if time.monotonic() >= silent_until:
                raise HttpError(
                    503,
                    f"The worker {self.worker or '?'} generating for model {self.target.model_name!r} sent nothing "
                    f"for {stall:g}s (GENERATION_STALL_SECONDS): it stopped or lost its broker.",
                    {"Retry-After": str(RETRY_AFTER_MIN)},
                )
            if await self._worker_died():
                self.queued = False
                raise HttpError(
                    503,
                    f"The worker {self.worker} generating for model {self.target.model_name!r} stopped (it died or "
                    "was shut down) before it finished; retry.",
                    {"Retry-After": str(RETRY_AFTER_MIN)},
                )

    async def _worker_died(self) -> bool:
        if self.worker is None or self.client.live_workers is None:
            return False
        try:
            return self.worker not in await self.client.live_workers()
        except HttpError:  # the broker is unreachable: the stall timer decides
            return False

    async def close(self) -> None:
        """Forget the request; one that may still run is taken back from its queue or cancelled on its worker."""
        if self.closed:
            return
        self.closed = True
        self.state.requests.pop(self.id, None)
        if self.finished or not self.queued:
            return
        if self.accepted is None and self.worker is None and await self._take_back():
            return
        if self.worker is not None:
            # Its events still in flight are not answered with a second cancel (the reader's orphans).
            self.state.cancelled[self.id] = time.monotonic()
            await _cancel_push(self.worker, self.id)
        else:
            # Taken from the queue but not yet acknowledged: the reader cancels it when its Accepted comes.
            self.state.cancelled.pop(self.id, None)


async def _cancel_push(worker: str, request_id: str) -> None:
    """Ask `worker` to drop a request at its next step (it RPOPs its cancel list every step)."""
    try:
        client: aioredis.Redis = shared_redis.async_client()
        async with client.pipeline(transaction=False) as pipe:
            pipe.lpush(cancel_key(worker), request_id.encode())
            pipe.expire(cancel_key(worker), STREAM_TTL_SECONDS)
            await pipe.execute()
    except (redis.RedisError, OSError) as exc:
        logger.warning("could not cancel generation request %s on %s: %s", request_id, worker, exc)


def _continues(event: Event) -> bool:
    """Whether more events follow this one (the request still runs on its worker)."""
    return isinstance(event, Accepted) or (isinstance(event, Output) and event.finish_reason is None)


__all__ = ["Generation", "GenerationClient", "LoadingCheck"]
