"""The gateway's generation client against a real (private) Redis and a scripted worker speaking the contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from core import redis as shared_redis
from inference import wire
from inference.gateway import Gateway, WorkerView
from inference.generation.client import Generation, GenerationClient
from inference.generation.messages import Accepted, Output, Refused, StepEvents, cancel_key, request_queue_key
from inference.routes import HttpError, Target
from tests.inference.generation_fakes import QUEUE, WORKER, FakeWorker, generative_target, words

pytestmark = pytest.mark.usefixtures("generation_redis")


def target() -> Target:
    return generative_target()


def client(live: set[str] | None = None) -> GenerationClient:
    async def live_queues(wanted: str | None = None) -> set[str]:
        return {QUEUE} if live is None else live

    return GenerationClient("test-gateway", live_queues)


def scenario(work: Callable[[], Awaitable[Any]], worker: FakeWorker | None = None) -> Any:
    async def main() -> Any:
        task = asyncio.create_task(worker.run()) if worker is not None else None
        try:
            return await asyncio.wait_for(work(), 10)
        finally:
            if task is not None:
                task.cancel()

    return asyncio.run(main())


async def collect(generation: Generation) -> list[Output]:
    try:
        return [output async for output in generation.outputs()]
    finally:
        await generation.close()


def test_a_request_is_accepted_streams_its_outputs_and_leaves_nothing_behind():
    gen = client()
    worker = FakeWorker(words)

    async def work() -> tuple[Any, list[Output]]:
        generation = await gen.submit(target(), prompt="Hi", messages=None, params={"max_tokens": 3})
        return generation.accepted, await collect(generation)

    accepted, outputs = scenario(work, worker)
    assert accepted.prompt_tokens == 5 and accepted.queue_ms == 1.5
    assert [o.text for o in outputs] == ["w0 ", "w1 ", "w2 "] and outputs[-1].finish_reason == "length"
    (request,) = worker.taken
    assert request.prompt == "Hi" and request.params == {"max_tokens": 3} and request.reply_to == gen.stream
    assert 1.9 < request.deadline - request.sent_at < 2.1  # INFERENCE_TIMEOUT_SECONDS covers the whole wait
    assert gen.in_flight == 0
    assert shared_redis.client().llen(cancel_key(WORKER)) == 0


def test_a_refusal_is_raised_with_its_status():
    worker = FakeWorker(lambda request: [(0.0, [Refused(request.id, 400, "prompt of 900 tokens is over 512")])])
    gen = client()

    async def work() -> None:
        await gen.submit(target(), prompt="long", messages=None, params={})

    with pytest.raises(HttpError) as caught:
        scenario(work, worker)
    assert caught.value.status == 400 and "over 512" in caught.value.message
    assert gen.in_flight == 0


def test_admission_refuses_a_full_queue_with_a_retry_after_and_a_queue_nobody_serves(settings):
    settings.GENERATION_MAX_QUEUED = 2
    shared_redis.client().lpush(request_queue_key(QUEUE), b"a", b"b")

    async def submit(gen: GenerationClient) -> None:
        await gen.submit(target(), prompt="x", messages=None, params={})

    started = time.monotonic()
    with pytest.raises(HttpError) as caught:
        scenario(lambda: submit(client()))
    assert time.monotonic() - started < 1  # fast: nothing waited
    assert caught.value.status == 503 and "2 requests waiting" in caught.value.message
    assert caught.value.headers["Retry-After"].isdigit() and int(caught.value.headers["Retry-After"]) >= 1
    assert shared_redis.client().llen(request_queue_key(QUEUE)) == 2  # nothing was queued
    with pytest.raises(HttpError) as caught:
        scenario(lambda: submit(client(live=set())))
    assert caught.value.status == 503 and "No live worker serves queue 'inference'" in caught.value.message


def test_retry_after_follows_the_queue_waits_seen():
    gen = client()
    assert gen.retry_after(QUEUE) == 1
    gen._queue_waited(QUEUE, 4200.0)
    assert gen.retry_after(QUEUE) == 5
    gen._queue_waited("other", 10**7)
    assert gen.retry_after("other") == 30


def test_a_request_no_worker_takes_is_taken_back_from_the_queue_at_its_deadline(settings):
    settings.INFERENCE_TIMEOUT_SECONDS = 0.3
    gen = client()

    async def work() -> None:
        await gen.submit(target(), prompt="x", messages=None, params={})

    with pytest.raises(HttpError) as caught:
        scenario(work)
    assert caught.value.status == 504 and "No worker took the request" in caught.value.message
    assert shared_redis.client().llen(request_queue_key(QUEUE)) == 0  # LREMed: no worker will run it
    assert gen.in_flight == 0


def test_a_request_taken_just_as_its_wait_ran_out_is_cancelled_on_its_worker(settings):
    settings.INFERENCE_TIMEOUT_SECONDS = 0.3
    # The worker takes it at once but says so only after the deadline: LREM finds nothing.
    worker = FakeWorker(lambda request: [(0.5, [Accepted(request.id, 2, 500.0)])])
    gen = client()

    async def work() -> None:
        await gen.submit(target(), prompt="x", messages=None, params={})

    with pytest.raises(HttpError) as caught:
        scenario(work, worker)
    assert caught.value.status == 504 and "it was cancelled" in caught.value.message
    (request,) = worker.taken
    assert shared_redis.client().lrange(cancel_key(WORKER), 0, -1) == [request.id.encode()]
    assert gen.in_flight == 0


def test_a_worker_that_goes_silent_ends_the_stream_with_an_error_within_the_stall_time():
    worker = FakeWorker(lambda request: words(request, count=3)[:2])  # accepted, one output, then nothing
    gen = client()
    seen: list[str] = []

    async def work() -> float:
        generation = await gen.submit(target(), prompt="x", messages=None, params={})
        started = time.monotonic()
        try:
            async for output in generation.outputs():
                seen.append(output.text)
        finally:
            await generation.close()
        return time.monotonic() - started

    with pytest.raises(HttpError) as caught:
        scenario(work, worker)
    assert seen == ["w0 "]
    assert caught.value.status == 503 and "sent nothing for 0.5s" in caught.value.message
    assert gen.in_flight == 0


def test_a_consumer_that_leaves_cancels_its_request_on_the_worker_at_once():
    worker = FakeWorker(lambda request: words(request, count=50, delay=0.05))
    gen = client()

    async def work() -> float:
        generation = await gen.submit(target(), prompt="x", messages=None, params={})
        async for _ in generation.outputs():
            break
        await generation.close()
        return time.monotonic()

    closed_at = scenario(work, worker)
    (request,) = worker.taken
    assert shared_redis.client().lrange(cancel_key(WORKER), 0, -1) == [request.id.encode()]
    assert time.monotonic() - closed_at < 1
    assert gen.in_flight == 0


def test_a_caller_cancelled_while_waiting_takes_its_request_back():
    gen = client()

    async def work() -> int:
        task = asyncio.create_task(gen.submit(target(), prompt="x", messages=None, params={}))
        await asyncio.sleep(0.2)
        assert shared_redis.client().llen(request_queue_key(QUEUE)) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(shared_redis.client().llen(request_queue_key(QUEUE)))

    assert scenario(work) == 0
    assert gen.in_flight == 0


def test_events_of_a_request_nobody_waits_for_are_answered_with_one_cancel():
    gen = client()

    async def work() -> list[bytes]:
        gen._started()
        redis = shared_redis.async_client()
        for _ in range(3):
            await redis.lpush(gen.stream, StepEvents(WORKER, time.time(), [Output("gone", "x", [1], None, 1)]).encode())
        await redis.lpush(gen.stream, StepEvents(WORKER, time.time(), [Output("done", "", [], "stop", 1)]).encode())
        await asyncio.sleep(0.5)
        return list(await redis.lrange(cancel_key(WORKER), 0, -1))

    assert scenario(work) == [b"gone"]


def test_a_model_still_loading_on_a_worker_is_answered_503_loading_and_its_request_taken_back():
    """The worker's heartbeat says it loads the version (the real gateway's check reads it): a request that
    waited for it until its deadline is refused 503 "loading" and leaves the queue; the next one is refused
    at once, nothing queued; once the heartbeat says loaded, requests are served."""
    gateway = Gateway()
    beats = shared_redis.named_client(f"{wire.WORKER_CLIENT_PREFIX}{WORKER}")
    version = target().version_id

    def beat(loading: list[int], loaded: list[int]) -> None:
        beats.hset(wire.WORKERS_KEY, WORKER, wire.Heartbeat([QUEUE], time.time(), loaded, loading).encode())
        gateway.workers = WorkerView()  # read again at the next check

    async def submit() -> Generation:
        return await gateway.generation.submit(target(), prompt="x", messages=None, params={})

    async def refused() -> tuple[HttpError, float, int]:
        started = time.monotonic()
        with pytest.raises(HttpError) as caught:
            await submit()
        queued = int(await shared_redis.async_client().llen(request_queue_key(QUEUE)))
        return caught.value, time.monotonic() - started, queued

    try:
        beat(loading=[version], loaded=[])
        for waited in (True, False):
            error, elapsed, queued = scenario(refused)
            assert error.status == 503 and "is loading on a worker" in error.message, error.message
            assert error.headers["Retry-After"].isdigit() and queued == 0
            # The first waited for the load until its 2 s deadline (503 "loading", not 504); the next,
            # arriving once the load had lasted half the timeout, was refused at once.
            assert (1.9 < elapsed < 3.0) if waited else elapsed < 0.5, elapsed
        beat(loading=[], loaded=[version])

        async def served() -> list[Output]:
            return await collect(await submit())

        assert [output.text for output in scenario(served, FakeWorker(words))] == ["w0 ", "w1 ", "w2 "]
    finally:
        beats.close()
