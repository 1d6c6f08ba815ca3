"""The prediction gateway: Open Inference Protocol v2 over HTTP, as a lean ASGI app.

Predictions stay out of Django's request cycle. Each gateway process authorises a
request and resolves its model version from in-process caches (filled from the
database on a miss, dropped when the rows change), decodes and checks the tensors, and
coalesces the requests that arrive together for one model version into one message to
the workers. While at most INFERENCE_MAX_IN_FLIGHT batches of a version are in flight,
new requests wait for the next batch; nothing waits on a timer unless the version asks
for a batching delay.

Admission (inference.admission): past INFERENCE_MAX_QUEUED requests of a version being read,
waiting or running in this process, or when the coalescer's expected wait would outlast its
deadline, a new request is refused at once (503, Retry-After), before its body is read. A
request's deadline (INFERENCE_TIMEOUT_SECONDS) starts when it reaches the gateway and covers
its whole wait: a request still waiting at its deadline is answered 504 without being sent, a
batch carries the earliest deadline of its requests, and a worker drops a batch popped past it.

A text (Hugging Face) version takes BYTES texts: they and the request's text parameters are
checked by inference.text, and the parameters ride beside the request to the worker. The
OpenAI-compatible /v1 (inference.openai) goes through this gateway's caches, guard,
coalescers and telemetry in the same way; only its shapes differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar, cast
from urllib.parse import parse_qs

import numpy as np
import redis
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import Error as DatabaseError
from django.db import close_old_connections, connection

from accounts import token_throttle
from accounts.services import token_authenticate
from core import hygiene
from core import redis as shared_redis
from core.errors import Overloaded, PortalError
from core.invalidation import INVALIDATE_CHANNEL
from inference import admission, guard, protocol, telemetry, text, wire
from inference.generation.client import GenerationClient
from inference.routes import HttpError, Target
from inference.wire import BatchReply, BatchRequest, Failure, Outputs
from registry import access, selectors
from registry.access import Action
from registry.models import VersionStatus
from registry.text_tasks import TEXT_INPUT, TextTask

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

SERVER_NAME = "maas-portal"
SERVER_VERSION = "0.1.0"
# Cached authorisations and routes are also dropped on this timer, in case an
# invalidation message was missed while Redis was away.
CACHE_TTL_SECONDS = 30.0
MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<tail>/ready|/infer|/stats)?/?$"
)
# What the answers of each endpoint may be (Accept) and what an inference body may be (Content-Type).
JSON_ONLY = (hygiene.JSON,)
INFER_TYPES = (protocol.JSON_CONTENT_TYPE, protocol.BINARY_CONTENT_TYPE)
SERVER_PATHS = ("/v2", "/v2/", "/v2/health/live", "/v2/health/ready")
AUTH_REQUIRED = (
    "Authentication required: send 'Authorization: Bearer <API token>' (only publicly predictable models "
    "answer without one)."
)
ANONYMOUS = AnonymousUser()
PLATFORMS = {
    "torchscript": "pytorch_torchscript",
    "exported_program": "pytorch_exported_program",
    "onnx": "onnxruntime_onnx",
}
# The parameters of a request that has none (shared: tensor requests never carry any).
NO_PARAMETERS: dict[str, Any] = {}
# What a client is told to wait before it retries a 503 (a database or broker outage, a model loading).
RETRY_AFTER_SECONDS = 2
# How often a request waiting for its batch's reply looks at the workers' heartbeats (the
# worker died; the model is still loading), and how long a readiness answer is reused.
WATCH_SECONDS = 0.5
# How long an answer that would refuse (no live worker on a queue) is reused: a worker that has
# just started is seen at once by every web process, not after each one's WATCH_SECONDS.
ABSENT_WATCH_SECONDS = 0.05
# When a request meets a version still loading: as it arrives, while it waits, at its deadline.
LoadingMoment = Literal["arrival", "waiting", "deadline"]

P = ParamSpec("P")
T = TypeVar("T")


def _with_fresh_connection(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a lookup in this pool thread, first replacing a connection broken meanwhile (a database
    restart), and closing afterwards one the lookup found broken: the gateway has no request
    cycle to do it, so without this a dead connection would answer every later lookup."""
    close_old_connections()
    try:
        return function(*args, **kwargs)
    finally:
        close_old_connections()


async def database(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A database lookup from the event loop; an unavailable database is a 503, not a 500."""
    try:
        return await sync_to_async(_with_fresh_connection, thread_sensitive=False)(function, *args, **kwargs)
    except DatabaseError as exc:
        logger.warning("gateway database lookup failed: %s", exc)
        raise HttpError(
            503, "The database is unavailable; try again shortly.", {"Retry-After": str(RETRY_AFTER_SECONDS)}
        ) from None


async def _worker_connections(client: aioredis.Redis) -> set[str] | None:
    """Identities of the workers whose heartbeat connection is open; None where CLIENT LIST is refused."""
    try:
        clients = await client.client_list(_type="normal")
    except redis.ResponseError:  # disabled or renamed on some managed servers: the TTL alone decides
        return None
    prefix = wire.WORKER_CLIENT_PREFIX
    return {entry["name"].removeprefix(prefix) for entry in clients if entry.get("name", "").startswith(prefix)}


def _database_ping() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def target_resolve(user: Any, name: str, version: str | None) -> Target:
    """Access-checked lookup of what a path addresses (runs in a thread: it queries the database)."""
    if version is None or version.isdigit():
        found = selectors.version_resolve(user, name, version=version)
    else:
        found = selectors.version_resolve(user, name, alias=version)
    model = found.model
    ready = model.versions.filter(status=VersionStatus.READY).order_by("version").values_list("version", flat=True)
    generative = found.task == TextTask.TEXT_GENERATION
    context = int(found.validation.get("context_length") or 0) if generative else 0
    limit = found.max_tokens_limit or settings.GENERATION_MAX_TOKENS_LIMIT
    if context:
        # A prompt needs at least one token of the context.
        limit = min(limit, context - 1)
    default = min(found.max_tokens_default or settings.GENERATION_MAX_TOKENS_DEFAULT, limit)
    return Target(
        version_id=found.pk, model_name=model.name, version=found.version, status=found.status,
        format=found.format, signature=found.signature, queue=model.serving_queue,
        max_batch_size=found.max_batch_size, max_batch_delay_ms=found.max_batch_delay_ms,
        ready_versions=tuple(ready), model_id=model.pk, actions=access.role_actions(user, model), task=found.task,
        max_tokens_default=default if generative else 0, max_tokens_limit=limit if generative else 0,
        context_length=context, chat_template=generative and bool(found.validation.get("chat_template")),
        labels=tuple(found.labels or ()),
    )  # fmt: skip


def _stats(user: Any, name: str, version: str | None, window: str | None) -> dict[str, Any]:
    """Serving statistics of a model (all versions) or of one version or alias, like Triton's /stats."""
    model = selectors.model_get(user, name)
    guard.token_covers(user, model.pk, model.name)
    guard.token_scoped(user, Action.VIEW)
    if version is None:
        return telemetry.stats(model, window, None)
    number = int(version) if version.isdigit() else selectors.alias_get(model, version).version.version
    return telemetry.stats(model, window, number)


def _authenticate(raw: str) -> Any:
    token = token_authenticate(raw)
    return token.user if token else None


# What a request's future resolves to: its own answer and the reply of the batch it rode in.
Answered = tuple[Outputs | Failure, BatchReply]
# Bodies from this size on are decoded in a turn of the event loop of their own (Gateway.decode_turn).
DECODE_TURN_BYTES = 64 * 1024
# A request waiting in a coalescer: its tensors, its parameters (top_k, ...), its future and
# its deadline (epoch seconds).
Waiting = tuple[wire.Tensors, dict[str, Any], asyncio.Future[Answered], float]


class Coalescer:
    """Requests for one model version waiting to be sent together."""

    def __init__(self, gateway: Gateway, target: Target) -> None:
        self.gateway = gateway
        self.target = target
        self.waiting: list[Waiting] = []
        self.in_flight = 0
        self.timer: asyncio.TimerHandle | None = None
        self.batch_seconds = 0.0  # smoothed time from sending a batch to its reply
        # The first reply is not timed: it may have waited for the worker to load the model, and a
        # load of seconds taken as the time of a batch would refuse the next requests as late.
        self.replied = False

    def expected_wait(self) -> float:
        """Seconds a request joining the queue now can expect to wait (0 while nothing waits)."""
        if not self.waiting:
            return 0.0
        return admission.expected_wait(len(self.waiting), self.target.max_batch_size, self.in_flight,
                                       settings.INFERENCE_MAX_IN_FLIGHT, self.batch_seconds)  # fmt: skip

    def submit(
        self, tensors: wire.Tensors, parameters: dict[str, Any] = NO_PARAMETERS, deadline: float | None = None
    ) -> asyncio.Future[Answered]:
        """Queue one request (with its own parameters, which travel to the worker beside it).

        `deadline` (epoch seconds; default: INFERENCE_TIMEOUT_SECONDS from now) bounds its whole wait.
        """
        future: asyncio.Future[Answered] = asyncio.get_running_loop().create_future()
        if deadline is None:
            deadline = time.time() + settings.INFERENCE_TIMEOUT_SECONDS
        self.waiting.append((tensors, parameters, future, deadline))
        if self.target.max_batch_delay_ms and self.timer is None and self.in_flight < settings.INFERENCE_MAX_IN_FLIGHT:
            self.timer = asyncio.get_running_loop().call_later(self.target.max_batch_delay_ms / 1000, self._timer_fired)
        elif not self.target.max_batch_delay_ms:
            self.flush()
        return future

    def _timer_fired(self) -> None:
        self.timer = None
        self.flush()

    def flush(self) -> None:
        now = time.time()
        while self.waiting and self.in_flight < settings.INFERENCE_MAX_IN_FLIGHT:
            batch: list[Waiting] = []
            rows = 0
            while self.waiting and (not batch or rows + wire.rows(self.waiting[0][0]) <= self.target.max_batch_size):
                item = self.waiting.pop(0)
                if item[3] <= now:
                    self._expired(item)
                    continue
                rows += wire.rows(item[0])
                batch.append(item)
            if not batch:
                continue
            self.in_flight += 1
            asyncio.get_running_loop().create_task(self._send(batch))

    def _expired(self, item: Waiting) -> None:
        """Answer 504 a request whose deadline passed while it waited here: it is never sent."""
        if not item[2].done():
            timeout = settings.INFERENCE_TIMEOUT_SECONDS
            item[2].set_exception(HttpError(504, (
                f"The request for model {self.target.model_name!r} v{self.target.version} waited {timeout:g}s "
                "(INFERENCE_TIMEOUT_SECONDS) for the workers, which are busy: it was not sent."
            )))  # fmt: skip

    async def _send(self, batch: list[Waiting]) -> None:
        sent = time.monotonic()
        try:
            reply = await self.gateway.exchange(
                self.target, [item[0] for item in batch], [item[1] for item in batch], min(item[3] for item in batch)
            )
            if self.replied:
                self.batch_seconds = admission.smoothed(self.batch_seconds, time.monotonic() - sent)
            self.replied = True
            if len(reply.answers) != len(batch):
                raise HttpError(502, f"A worker answered {len(reply.answers)} requests of a batch of {len(batch)}.")
            for item, answer in zip(batch, reply.answers, strict=True):
                if not item[2].done():
                    item[2].set_result((answer, reply))
        except HttpError as exc:
            for item in batch:
                if not item[2].done():
                    item[2].set_exception(exc)
        finally:
            self.in_flight -= 1
            self.flush()


@dataclass(frozen=True)
class WorkerView:
    """One read of the workers' heartbeats and of what they took, reused for WATCH_SECONDS."""

    fetched: float = 0.0  # time.monotonic() of the read; 0: read at the next look
    live: list[wire.Heartbeat] = field(default_factory=list)
    live_ids: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)  # ids of the batches that workers now dead had taken


class Gateway:
    """One per process: the Redis connections, caches and coalescers of this process."""

    def __init__(self) -> None:
        identity = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.reply_key = f"{wire.REPLY_PREFIX}{identity}"
        # Completions and chats: their own requests and event stream (inference.generation.client).
        self.generation = GenerationClient(identity, self.live_queues, self.live_worker_ids, self.loading_check)
        self.redis: aioredis.Redis | None = None
        self.pending: dict[str, asyncio.Future[BatchReply]] = {}
        self.coalescers: dict[int, Coalescer] = {}
        self.users: dict[str, tuple[float, Any]] = {}
        self.targets: dict[tuple[int, str, str | None], tuple[float, Target]] = {}
        # Lookups under way, by cache key: when an entry expires under load, one query refills it
        # and the other requests wait for that one instead of each taking a database connection.
        self.lookups: dict[Any, asyncio.Future[Any]] = {}
        # When the heartbeats were read, those of live workers, and the batches dead workers took.
        self.workers = WorkerView()
        self.database_ok_at = 0.0
        # Versions seen loading on a worker, and since when (a short load is waited for).
        self.loading_since: dict[int, float] = {}
        # When a worker last answered a version (epoch seconds): it holds the version from then on,
        # even while the heartbeats read before its answer still say it is loading.
        self.answered_at: dict[int, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decoding: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    # -- plumbing ------------------------------------------------------------------------
    def connection(self) -> aioredis.Redis:
        """This process's Redis client (rate limits, heartbeats), connecting on first use."""
        return self._connect()

    def _connect(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        # One event loop in a server; a Django view run by a test client gets a loop per request,
        # and a connection (and the reader tasks) belong to the loop that made them.
        if self.redis is None or self._loop is not loop:
            if not settings.INFERENCE_REDIS_URL:
                raise HttpError(503, "Online predictions need a Redis (INFERENCE_REDIS_URL) and none is configured.")
            self.redis = shared_redis.async_client()
            self._loop = loop
            self._tasks = [loop.create_task(self._read_replies()), loop.create_task(self._listen_invalidations())]
        return self.redis

    async def _read_replies(self) -> None:
        reader = shared_redis.async_client(timeout=None)
        while True:
            try:
                item = await reader.brpop([self.reply_key], timeout=1)
            except (redis.RedisError, OSError) as exc:
                logger.warning("gateway lost Redis while reading replies: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if item is None:
                continue
            try:
                reply = BatchReply.decode(cast(bytes, item[1]))
            except wire.WireError as exc:
                # Its batch cannot be told: that request times out (504) like a lost reply.
                logger.error("gateway dropped a malformed reply: %s", exc)
                continue
            future = self.pending.pop(reply.batch_id, None)
            if future is not None and not future.done():
                future.set_result(reply)

    async def _listen_invalidations(self) -> None:
        while True:
            try:
                # Closed on the way out, so its connection goes back to the shared pool.
                async with shared_redis.async_client(timeout=None).pubsub() as pubsub:
                    await pubsub.subscribe(INVALIDATE_CHANNEL)
                    # Anything may have changed while we were not listening.
                    self.forget()
                    guard.subscription(True)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self.forget()
                            await guard.acknowledge(self._connect(), message["data"])
            except (redis.RedisError, OSError) as exc:
                guard.subscription(False)
                logger.warning("gateway lost the invalidation channel: %s", exc)
                await asyncio.sleep(1)

    def forget(self) -> None:
        """Drop cached users and routes (tokens revoked, aliases moved, models changed)."""
        self.users.clear()
        self.targets.clear()
        guard.forgotten()

    async def exchange(
        self,
        target: Target,
        requests: list[wire.Tensors],
        parameters: list[dict[str, Any]],
        deadline: float | None = None,
    ) -> BatchReply:
        """Send one batch to the workers of the target's queue and wait for its reply until `deadline`."""
        client = self._connect()
        batch_id = uuid.uuid4().hex
        now = time.time()
        if deadline is None:
            deadline = now + settings.INFERENCE_TIMEOUT_SECONDS
        # The whole wait's limit, as the caller sees it; what is left of it bounds this exchange.
        timeout, remaining = settings.INFERENCE_TIMEOUT_SECONDS, max(0.0, deadline - now)
        message = BatchRequest(batch_id, self.reply_key, target.version_id, now, deadline, requests, parameters)
        future: asyncio.Future[BatchReply] = asyncio.get_running_loop().create_future()
        self.pending[batch_id] = future
        try:
            await self.serving_check(target)
            await client.lpush(wire.queue_key(target.queue), message.encode())
        except (redis.RedisError, OSError) as exc:
            self.pending.pop(batch_id, None)
            raise HttpError(503, f"The prediction broker is unavailable: {exc}") from None
        except HttpError:
            self.pending.pop(batch_id, None)
            raise
        try:
            # The reply usually comes at once; a long wait looks at the workers' heartbeats
            # every WATCH_SECONDS, so a worker that died or a model still loading is answered
            # 503 at once rather than 504 at the timeout.
            until = time.monotonic() + remaining
            while True:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait({future}, timeout=min(WATCH_SECONDS, remaining))
                if done:
                    self.answered_at[target.version_id] = time.time()
                    return future.result()
                await self.serving_check(target, sent=batch_id)
            # Out of time while the version still loads: 503 loading (retry), not a 504.
            await self.serving_check(target, sent=batch_id, deadline=True)
        except BaseException:
            self.pending.pop(batch_id, None)
            raise
        self.pending.pop(batch_id, None)
        raise HttpError(
            504,
            f"No worker answered for model {target.model_name!r} v{target.version} within {timeout:g}s "
            "(workers busy, stopped, or one died while running the batch).",
        )

    async def serving_check(self, target: Target, *, sent: str = "", deadline: bool = False) -> None:
        """Refuse (503, with a Retry-After) a batch no live worker can serve now: none listens on
        the target's queue, the worker that took the `sent` batch died, or the version is still
        loading (see `loading_check`)."""
        beats = await self._serving(target)
        if sent and (not beats or sent in self.workers.lost):
            raise HttpError(
                503,
                f"The worker running the request for model {target.model_name!r} v{target.version} stopped (it "
                "died or was shut down) before it answered.",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if not beats:
            raise HttpError(
                503,
                f"No live worker serves queue {target.queue!r} for model {target.model_name!r} "
                f"(start one: celery -A portal worker -Q {target.queue}).",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self._loading_refusal(target, beats, "deadline" if deadline else "waiting" if sent else "arrival")

    async def _serving(self, target: Target) -> list[wire.Heartbeat]:
        """The live workers that listen on the target's queue."""
        return [beat for beat in await self.live_workers(target.queue) if target.queue in beat.queues]

    async def loading_check(self, target: Target, *, deadline: bool = False) -> None:
        """Refuse (503 "loading", with a Retry-After) a request for a version that a live worker is
        loading and none holds (generation requests: see GenerationClient)."""
        beats = await self._serving(target)
        self._loading_refusal(target, beats, "deadline" if deadline else "arrival")

    def _loading_refusal(self, target: Target, beats: list[wire.Heartbeat], moment: LoadingMoment) -> None:
        """503 while the version loads on a worker of `beats` and none holds it: at the "arrival" of
        a request once the load has lasted half the timeout (it would likely wait past it) or
        outlasted a request's whole wait, or at the "deadline" of a request that waited for it. A
        request still "waiting" keeps waiting: the load may end before its deadline."""
        loading = [beat.beat_at for beat in beats if target.version_id in beat.loading]
        if (
            not loading
            or any(target.version_id in beat.loaded for beat in beats)
            # A worker answered it after the heartbeat that said it was loading: the load is over.
            or self.answered_at.get(target.version_id, 0.0) > max(loading)
        ):
            self.loading_since.pop(target.version_id, None)
            return
        # A short load is waited for; once it has lasted half the timeout, requests are refused
        # at once, so none runs into the timeout while the load goes on.
        now, half = time.monotonic(), settings.INFERENCE_TIMEOUT_SECONDS / 2
        since = self.loading_since.setdefault(target.version_id, now)
        if moment == "deadline":
            # The load outlasted a request's whole wait (however late this process first saw
            # it): the requests after it are refused at once, not each made to wait its timeout.
            self.loading_since[target.version_id] = min(since, now - half)
        if moment == "deadline" or (moment == "arrival" and now - since >= half):
            raise HttpError(
                503,
                f"Model {target.model_name!r} v{target.version} is loading on a worker; retry shortly.",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )

    # -- lookups -------------------------------------------------------------------------
    async def user(self, headers: dict[bytes, bytes], address: str = "local") -> Any:
        """The caller of a bearer token (cached); `address` (the client's) counts bad tokens."""
        raw = headers.get(b"authorization", b"").decode("latin-1")
        keyword, _, token = raw.partition(" ")
        if not raw:
            # Anonymous: only a publicly predictable model answers (see target()).
            self._connect()
            return ANONYMOUS
        if keyword.lower() != "bearer" or not token.strip():
            raise HttpError(401, AUTH_REQUIRED)
        key = hashlib.sha256(token.strip().encode()).hexdigest()
        cached = self.users.get(key)
        if cached and time.monotonic() - cached[0] < CACHE_TTL_SECONDS and guard.cache_trusted():
            return cached[1]
        client = self._connect()
        # Only lookups are guarded: a client that sent too many bad tokens waits (429).
        await token_throttle.admit_async(client, address)
        user = await self._once(("user", key), lambda: self._authenticated(key, token.strip()))
        if user is None:
            await token_throttle.failed_async(client, address)
            raise HttpError(401, "The API token is invalid, expired or revoked.")
        return user

    async def _authenticated(self, key: str, token: str) -> Any:
        while True:
            seen = guard.generation()
            user = await database(_authenticate, token)
            if guard.generation() == seen:  # else a revocation raced the lookup: look again
                break
        if user is not None:
            self.users[key] = (time.monotonic(), user)
        return user

    async def _once(self, key: Any, lookup: Callable[[], Awaitable[T]]) -> T:
        """`lookup()`'s result, shared by every caller asking for `key` while it runs."""
        future = self.lookups.get(key)
        if future is None:
            future = asyncio.ensure_future(lookup())
            self.lookups[key] = future
            future.add_done_callback(lambda done: self._lookup_done(key, done))
        # Shielded: one caller's cancellation (its client went away) does not cancel the others'.
        return cast(T, await asyncio.shield(future))

    async def target(self, user: Any, name: str, version: str | None) -> Target:
        key = (user.pk, name, version)
        cached = self.targets.get(key)
        if cached and time.monotonic() - cached[0] < CACHE_TTL_SECONDS and guard.cache_trusted():
            return cached[1]
        try:
            return await self._once(("target", key), lambda: self._resolved(key, user, name, version))
        except PortalError as exc:
            if not user.is_authenticated:
                # Without a token, whatever is not public answers alike: nothing leaks.
                raise HttpError(401, AUTH_REQUIRED) from None
            raise HttpError(exc.status_code, exc.message, code=exc.code) from None

    def _lookup_done(self, key: Any, future: asyncio.Future[Any]) -> None:
        self.lookups.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved, even when every caller went away before it ended

    async def _resolved(self, key: tuple[int, str, str | None], user: Any, name: str, version: str | None) -> Target:
        seen = guard.generation()
        target = await database(target_resolve, user, name, version)
        if target.status == VersionStatus.READY and guard.generation() == seen:
            # Only ready routes are cached: a pending version must be seen turning ready.
            self.targets[key] = (time.monotonic(), target)
        return target

    async def submit(
        self, target: Target, tensors: wire.Tensors, parameters: dict[str, Any] = NO_PARAMETERS
    ) -> tuple[Outputs, BatchReply]:
        """Run one checked request through the version's coalescer; a worker's Failure is raised as HttpError.

        Refused at once: 400 when a tensor request has more rows than the version's max_batch_size,
        503 with Retry-After when the version's backlog in this process is full (inference.admission).
        """
        if target.status != VersionStatus.READY:
            raise HttpError(
                503, f"Model {target.model_name!r} v{target.version} is {target.status}, not ready to serve."
            )
        if not target.task:
            refusal = admission.rows_refusal(
                target.signature, tensors, target.max_batch_size, target.model_name, target.version
            )
            if refusal is not None:
                raise HttpError(400, refusal)
        if admission.held.get() == target.version_id:
            # Its place was taken before its body: the queue may have grown while it was read and decoded.
            self.late_check(target)
            answer, reply = await self._coalesced(target, tensors, parameters)
        else:
            with self.place(target):  # checks the wait ahead as it takes the place
                answer, reply = await self._coalesced(target, tensors, parameters)
        if isinstance(answer, Failure):
            raise HttpError(answer.status, answer.message)
        return answer, reply

    async def _coalesced(
        self, target: Target, tensors: wire.Tensors, parameters: dict[str, Any]
    ) -> tuple[Outputs | Failure, BatchReply]:
        coalescer = self.coalescers.get(target.version_id)
        if coalescer is None or coalescer.target != target:
            coalescer = self.coalescers[target.version_id] = Coalescer(self, target)
        return await coalescer.submit(tensors, parameters, admission.deadline())

    @contextlib.contextmanager
    def place(self, target: Target) -> Iterator[None]:
        """Hold one of the version's INFERENCE_MAX_QUEUED places in this process until the block ends.

        Taken before a request's body is read (so the requests being read and decoded count),
        and refused at once (503, Retry-After) when none is free or when the wait ahead in the
        coalescer would outlast the request's deadline. submit() inside the block uses it.
        """
        backlog = admission.backlog_of(target.version_id)
        admitted, seen = backlog.admit()
        if not admitted:
            raise self._overloaded(target, backlog, seen)
        started = time.monotonic()
        held = admission.held.set(target.version_id)
        try:
            self.late_check(target)
            yield
        finally:
            admission.held.reset(held)
            backlog.release(started)

    @contextlib.asynccontextmanager
    async def decode_turn(self, size: int) -> AsyncIterator[None]:
        """A turn of the event loop of its own for the decode of a body of `size` bytes, when large.

        Bodies that finish arriving together were decoded back to back in one turn of the loop
        (the CNN's 240 kB JSON: 1-3 ms each), and a request arriving meanwhile waited for all of
        them before it could even be refused. One large decode at a time, each followed by a
        yield, lets the loop read new requests between two. A body under DECODE_TURN_BYTES
        decodes in microseconds: a turn would cost it more than it spares the others.
        """
        if size < DECODE_TURN_BYTES:
            yield
            return
        loop = asyncio.get_running_loop()
        if self._decoding is None or self._decoding[0] is not loop:
            self._decoding = (loop, asyncio.Lock())
        async with self._decoding[1]:
            yield
            await asyncio.sleep(0)

    def late_check(self, target: Target) -> None:
        """Refuse (503) a request whose expected wait in the version's coalescer outlasts its deadline."""
        coalescer = self.coalescers.get(target.version_id)
        if coalescer is not None and coalescer.waiting:
            expected, remaining = coalescer.expected_wait(), admission.deadline() - time.time()
            if expected > remaining:
                raise self._late(target, coalescer, expected, remaining)

    @staticmethod
    def _late(target: Target, coalescer: Coalescer, expected: float, remaining: float) -> HttpError:
        timeout = settings.INFERENCE_TIMEOUT_SECONDS
        message = admission.late_message(target.model_name, target.version, len(coalescer.waiting), expected, timeout)
        # By then the queue ahead has moved on far enough for a request to make its deadline.
        return HttpError(
            503, message, {"Retry-After": str(admission.retry_after(expected - remaining))}, code=Overloaded.code
        )

    @staticmethod
    def _overloaded(target: Target, backlog: admission.Backlog, seen: int) -> HttpError:
        message = admission.overload_message(target.model_name, target.version, seen, settings.INFERENCE_MAX_QUEUED)
        return HttpError(503, message, {"Retry-After": str(backlog.retry_after())}, code=Overloaded.code)

    async def live_queues(self, wanted: str | None = None) -> set[str]:
        """Prediction queues with at least one live worker (looked at afresh if `wanted` is not among them)."""
        return {queue for beat in await self.live_workers(wanted) for queue in beat.queues}

    async def live_workers(self, wanted: str | None = None) -> list[wire.Heartbeat]:
        """The heartbeats of live workers (read at most every WATCH_SECONDS).

        Live: a heartbeat younger than INFERENCE_WORKER_TTL_SECONDS and, where Redis lists its
        clients, the worker's heartbeat connection still open (closed by the kernel when the
        process dies, so a death is seen at the next read rather than after the TTL).
        """
        cached = self.workers.live
        missing = not any(wanted in beat.queues for beat in cached) if wanted else not cached
        if time.monotonic() - self.workers.fetched <= (ABSENT_WATCH_SECONDS if missing else WATCH_SECONDS):
            return cached
        client = self._connect()
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(wire.WORKERS_KEY)
                pipe.hgetall(wire.TAKEN_KEY)
                raw, taken = await pipe.execute()
            connected = await _worker_connections(client)
        except (redis.RedisError, OSError) as exc:
            raise HttpError(503, f"The prediction broker is unavailable: {exc}") from None
        horizon = time.time() - settings.INFERENCE_WORKER_TTL_SECONDS
        live: list[wire.Heartbeat] = []
        dead_ids: set[str] = set()
        live_ids: set[str] = set()
        for key, value in raw.items():
            identity = cast(bytes, key).decode()
            try:
                beat = wire.Heartbeat.decode(cast(bytes, value))
            except wire.WireError as exc:  # a worker of another release, or garbage: not live
                logger.warning("ignoring worker %r: %s", key, exc)
                continue
            if beat.beat_at > horizon and (connected is None or identity in connected):
                live.append(beat)
                live_ids.add(identity)
            else:
                dead_ids.add(identity)
        # What a dead worker took last died with it. (A worker that took batches has a heartbeat:
        # one without, its first beat not yet written, is not taken for dead.)
        lost = {
            batch
            for key, value in taken.items()
            if cast(bytes, key).decode() in dead_ids
            for batch in cast(bytes, value).decode().split(wire.TAKEN_SEPARATOR)
        }
        self.workers = WorkerView(time.monotonic(), live, live_ids, lost)
        return live

    async def live_worker_ids(self) -> set[str]:
        """The identities of live workers (as their heartbeats and generation events name them)."""
        await self.live_workers()
        return self.workers.live_ids

    async def database_check(self) -> None:
        """503 unless the database answers within a second (a success is reused for WATCH_SECONDS)."""
        if time.monotonic() - self.database_ok_at < WATCH_SECONDS:
            return
        try:
            await asyncio.wait_for(database(_database_ping), 1.0)
        except TimeoutError:
            raise HttpError(503, "The database did not answer within a second.") from None
        self.database_ok_at = time.monotonic()

    # -- HTTP ----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        admission.arrived.set(time.time())  # the request's deadline starts now
        try:
            status, body, headers = await self.route(scope, receive)
        except HttpError as exc:
            status, body = exc.status, protocol.error_body(exc.message)
            headers = {"Content-Type": "application/json", **exc.headers}
        except PortalError as exc:
            status, body, headers = (
                exc.status_code,
                protocol.error_body(exc.message),
                {"Content-Type": "application/json", **getattr(exc, "headers", {})},
            )
        except Exception:
            logger.exception("prediction gateway error")
            status, body = 500, protocol.error_body("Internal error in the prediction gateway.")
            headers = {"Content-Type": "application/json"}
        await respond(send, status, body, headers)

    async def route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, dict[str, str]]:
        path, method = scope["path"], scope["method"]
        headers = dict(scope.get("headers") or [])
        match = request_checked(scope, headers)
        if path in ("/v2", "/v2/"):
            return _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})
        if path == "/v2/health/live":
            return 200, b"", {}
        if path == "/v2/health/ready":
            if not await self.live_queues():
                raise HttpError(503, "No live prediction worker (start one: celery -A portal worker -Q inference).")
            await self.database_check()
            return 200, b"", {}
        assert match is not None  # request_checked refused every other path
        user = await self.user(headers, hygiene.client_address(scope))
        if match["tail"] == "/stats":
            if not user.is_authenticated:
                raise HttpError(401, AUTH_REQUIRED)
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            window = query.get("window", [None])[0]
            stats = await database(_stats, user, match["name"], match["version"], window)
            return _json(stats)
        target = await self.target(user, match["name"], match["version"])
        tail = match["tail"]
        guard.authorize(user, target, Action.PREDICT if tail == "/infer" else Action.VIEW)
        if tail is None:
            return _json(metadata_of(target))
        if tail == "/ready":
            if target.status != VersionStatus.READY:
                raise HttpError(400, f"Model {target.model_name!r} v{target.version} is {target.status}, not ready.")
            if target.queue not in await self.live_queues(target.queue):
                raise HttpError(400, f"No live worker serves queue {target.queue!r} for model {target.model_name!r}.")
            return 200, b"", {}
        if tail == "/infer":
            return await self.prediction(
                user, target, match["version"], "v2", lambda sample: self.infer(target, headers, receive, sample)
            )
        raise HttpError(404, f"No such endpoint: {method} {path}")  # pragma: no cover - MODEL_PATH has no other tail

    async def prediction(
        self, user: Any, target: Target, path_version: str | None, source: str,
        run: Callable[[telemetry.Sample], Awaitable[T]],
    ) -> T:  # fmt: skip
        """Run one authorised tensor prediction (`run`) under the caller's rate and token limits,
        timed and counted as `source` (v2: REST, grpc) whatever its outcome.

        A version that cannot serve it, or has no place left in this process, refuses it first:
        before the caller's limits are charged and before `run` reads and decodes its body.
        """
        sample = telemetry.Sample(target.version_id, target.model_name, target.version, path_version, source)
        sample.caller(user)
        client = self._connect()
        try:
            self.servable_check(target)
            with self.place(target):
                await guard.rate_limit(client, user)
                await guard.tokens_check(client, user)
                response = await run(sample)
            await guard.tokens_charge(client, user, sample.tokens)
        except Exception as exc:
            sample.failed(exc)
            raise
        sample.done(200)
        return response

    def servable_check(self, target: Target) -> None:
        """Refuse a tensor request at once, before its tensors are decoded: a version that is
        not ready (503), a text-generation model (400, it answers on /v1)."""
        if target.status != VersionStatus.READY:
            raise HttpError(
                503, f"Model {target.model_name!r} v{target.version} is {target.status}, not ready to serve."
            )
        text.not_generative(target.task, target.model_name, target.version)

    async def infer(
        self, target: Target, headers: dict[bytes, bytes], receive: Receive, sample: telemetry.Sample | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        body = await read_body(headers, receive)
        if sample is not None:
            sample.payload = len(body)
        header_length = headers.get(protocol.HEADER_LENGTH_HEADER.lower().encode())
        async with self.decode_turn(len(body)):
            request = protocol.decode_request(
                body, int(header_length) if header_length and header_length.isdigit() else None,
                target.signature, max_elements=settings.INFERENCE_MAX_ELEMENTS,
            )  # fmt: skip
        requested = None if request.requested_outputs is None else [name for name, _ in request.requested_outputs]
        selected, parameters = await self.tensors_infer(target, request.inputs, request.parameters, requested, sample)
        names = [name for name, _, _ in selected]
        body, response_headers = protocol.encode_response(
            target.model_name, str(target.version), request.id, selected, request.binary_output_names(names), parameters
        )
        return 200, body, response_headers

    async def tensors_infer(
        self, target: Target, inputs: wire.Tensors, request_parameters: dict[str, Any], requested: list[str] | None,
        sample: telemetry.Sample | None = None,
    ) -> tuple[list[tuple[str, str, np.ndarray]], dict[str, Any]]:  # fmt: skip
        """Run decoded, signature-checked inputs through the coalescer (any transport: REST, gRPC).

        Returns the outputs asked for (`requested` names; None for all), as (name, datatype,
        array), and the answer's parameters: where the time went (queue wait and compute on
        the worker, rows in the forward pass, the worker).
        """
        parameters = NO_PARAMETERS
        if target.task:
            # A text model: its texts and its parameters (top_k, ...) are checked here, once.
            text.texts_of_tensor(inputs[TEXT_INPUT], f"input {TEXT_INPUT!r}")
            parameters = text.parameters_check(target.task, request_parameters, protocol=True)
        answer, reply = await self.submit(target, inputs, parameters)
        outputs = answer.tensors
        specs = {spec["name"]: spec["datatype"] for spec in target.signature["outputs"]}
        names = list(specs) if requested is None else requested
        selected = [(name, specs[name], outputs[name]) for name in names]
        if sample is not None:
            sample.timing = {"qt": reply.queue_ms, "ct": reply.compute_ms, "bs": reply.batch_rows}
            if target.task:
                sample.prompt_tokens = text.usage_tokens(outputs)
        answer_parameters = {"queue_ms": round(reply.queue_ms, 3), "compute_ms": round(reply.compute_ms, 3),
                             "batch_size": reply.batch_rows, "worker": reply.worker}  # fmt: skip
        return selected, answer_parameters


async def respond(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    """Send a whole HTTP response (the body's length is added to the headers)."""
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(
    headers: dict[bytes, bytes], receive: Receive, limit: int | None = None,
    too_large: Callable[[], Exception] | None = None,
) -> bytes:  # fmt: skip
    """A request's body, refused past `limit` bytes (declared or received): `too_large()`, by
    default a 413 naming INFERENCE_MAX_BODY_BYTES, the default limit.

    The body must have arrived by the request's deadline (a 408 then): a request being read
    holds its model's place (Gateway.place), and a client sending slowly must not keep it.
    """
    limit = settings.INFERENCE_MAX_BODY_BYTES if limit is None else limit

    def refusal() -> Exception:
        if too_large is not None:
            return too_large()
        return HttpError(413, f"The request body is larger than the limit of {limit} bytes (INFERENCE_MAX_BODY_BYTES).")

    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise refusal()
    chunks, size = [], 0
    try:
        async with asyncio.timeout(admission.deadline() - time.time()):
            while True:
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise refusal()
                chunks.append(chunk)
                if not message.get("more_body"):
                    return b"".join(chunks)
    except TimeoutError:
        raise HttpError(408, (
            f"The request body was not received within the request's deadline of "
            f"{settings.INFERENCE_TIMEOUT_SECONDS:g}s (INFERENCE_TIMEOUT_SECONDS): {size} of it arrived."
        )) from None  # fmt: skip


def request_checked(scope: Scope, headers: dict[bytes, bytes]) -> re.Match[str] | None:
    """The rules every /v2 request meets before authentication (core.hygiene): host, path,
    method (405 with Allow), Accept (406), an inference body's Content-Type (415), and a
    well-formed model address (400). Returns the model path's match (None for server paths)."""
    hygiene.host_checked(headers, scope.get("server"))
    path, method = scope["path"], scope["method"]
    hygiene.path_checked(path)
    match = None if path in SERVER_PATHS else MODEL_PATH.match(path)
    if match is None and path not in SERVER_PATHS:
        raise HttpError(404, f"No such endpoint: {method} {path}")
    infer = match is not None and match["tail"] == "/infer"
    hygiene.method_checked(method, ("POST",) if infer else ("GET",), path)
    if infer:
        hygiene.content_type_checked(headers, INFER_TYPES)
        hygiene.accept_checked(headers, INFER_TYPES)
    elif not path.startswith("/v2/health/"):  # probes get an empty body whatever they accept
        hygiene.accept_checked(headers, JSON_ONLY)
    if match is not None:
        selectors.address_checked(match["name"], match["version"])
    return match


def metadata_of(target: Target) -> dict[str, Any]:
    """A model version's OIP metadata: name, ready versions, platform, inputs and outputs."""
    return {
        "name": target.model_name,
        "versions": [str(v) for v in target.ready_versions],
        # A text model's platform names its task: huggingface_fill_mask, huggingface_feature_extraction, ...
        "platform": f"huggingface_{target.task.replace('-', '_')}"
        if target.task
        else PLATFORMS.get(target.format, target.format),
        "inputs": target.signature.get("inputs", []),
        "outputs": target.signature.get("outputs", []),
    }


def _json(data: dict[str, Any], status: int = 200) -> tuple[int, bytes, dict[str, str]]:
    return status, json.dumps(data).encode(), {"Content-Type": "application/json"}


gateway = Gateway()


__all__ = [
    "AUTH_REQUIRED",
    "NO_PARAMETERS",
    "SERVER_NAME",
    "SERVER_VERSION",
    "Gateway",
    "HttpError",
    "Target",
    "WorkerView",
    "gateway",
    "metadata_of",
    "read_body",
    "request_checked",
    "respond",
    "target_resolve",
]
