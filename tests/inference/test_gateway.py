"""The gateway's handling of worker replies (batching itself: test_coalescer.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from core import redis as shared_redis
from inference import wire
from inference.gateway import DECODE_TURN_BYTES, Coalescer, Gateway, HttpError, WorkerView
from inference.routes import Target
from inference.wire import BatchReply, Failure, Outputs, Tensors


def _target(**fields: Any) -> Target:
    values: dict[str, Any] = {
        "version_id": 7, "model_name": "iris", "version": 1, "status": "ready", "format": "torchscript",
        "signature": {}, "queue": "inference", "max_batch_size": 8, "max_batch_delay_ms": 0, "ready_versions": (1,),
    }  # fmt: skip
    return Target(**(values | fields))


class Workers:
    """Answers each batch after `release` is set; `answers` can be made to lie about the batch size."""

    def __init__(self, drop: int = 0) -> None:
        self.batches: list[int] = []
        self.release = asyncio.Event()
        self.drop = drop

    async def exchange(
        self, target: Target, requests: list[Tensors], parameters: list[dict[str, Any]], deadline: float | None = None
    ) -> BatchReply:
        self.batches.append(len(requests))
        await self.release.wait()
        answers: list[Outputs | Failure] = [Outputs(tensors) for tensors in requests[self.drop :]]
        return BatchReply("b", answers, 1.0, 2.0, len(requests), "w")


def _request(value: float) -> Tensors:
    return {"x": np.full((1, 2), value, dtype=np.float32)}


def test_a_reply_with_the_wrong_number_of_answers_fails_its_batch_instead_of_hanging(settings):
    settings.INFERENCE_MAX_IN_FLIGHT = 2

    async def scenario() -> list[Any]:
        workers = Workers(drop=1)
        workers.release.set()
        coalescer = Coalescer(workers, _target())
        futures = [coalescer.submit(_request(i)) for i in range(3)]
        return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 5)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(outcome, HttpError) and outcome.status == 502 for outcome in outcomes), outcomes


def test_the_batches_a_worker_took_are_refused_503_once_it_dies_and_the_others_keep_waiting(generation_redis):
    """What a worker took (TAKEN_KEY, written as it pops) is tied to it: once its heartbeat connection
    closes (the process died), requests on its batches are answered 503 at the next look, whatever its
    last heartbeat said; batches a live worker took, or nobody took yet, keep waiting."""
    gateway = Gateway()
    workers = {name: shared_redis.named_client(f"{wire.WORKER_CLIENT_PREFIX}{name}") for name in ("live:1", "doomed:2")}
    for name, client in workers.items():
        client.hset(wire.WORKERS_KEY, name, wire.Heartbeat(["inference"], time.time(), [7]).encode())
    workers["live:1"].hset(wire.TAKEN_KEY, "live:1", "b-live")
    workers["doomed:2"].hset(wire.TAKEN_KEY, "doomed:2", "b-lost,b-lost-too")

    async def refusals() -> dict[str, str]:
        gateway.workers = WorkerView()  # read the workers again
        found = {}
        for batch in ("b-lost", "b-lost-too", "b-live", "b-nobody"):
            try:
                await gateway.serving_check(_target(), sent=batch)
            except HttpError as exc:
                found[batch] = f"{exc.status} {exc.message} Retry-After: {exc.headers.get('Retry-After')}"
        return found

    try:
        assert asyncio.run(refusals()) == {}
        workers["doomed:2"].close()  # as the kernel does when the process dies
        deadline = time.monotonic() + 5
        while not (refused := asyncio.run(refusals())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(refused) == ["b-lost", "b-lost-too"], refused
        assert refused["b-lost"] == (
            "503 The worker running the request for model 'iris' v1 stopped (it died or was shut down) before it "
            "answered. Retry-After: 2"
        )
    finally:
        for client in workers.values():
            client.close()


def test_a_version_answered_after_the_heartbeat_that_said_loading_is_not_refused_loading(settings):
    """The heartbeats are read every WATCH_SECONDS and sent every few seconds: right after a load
    ends, the last one still says "loading". A worker's answer since then tells the load is over."""
    settings.INFERENCE_TIMEOUT_SECONDS = 2
    gateway = Gateway()
    target = _target()
    beat = wire.Heartbeat(["inference"], time.time() - 1, [], loading=[7])
    gateway.loading_since[7] = time.monotonic() - 5  # loading for longer than half the timeout
    with pytest.raises(HttpError) as refused:
        gateway._loading_refusal(target, [beat], "arrival")
    assert refused.value.status == 503 and "is loading on a worker" in refused.value.message

    gateway.answered_at[7] = time.time()  # a worker answered the version after that heartbeat
    gateway._loading_refusal(target, [beat], "arrival")
    assert 7 not in gateway.loading_since
    # An answer older than the heartbeat says nothing about this load.
    gateway.answered_at[7] = beat.beat_at - 1
    gateway.loading_since[7] = time.monotonic() - 5
    with pytest.raises(HttpError):
        gateway._loading_refusal(target, [beat], "arrival")


def test_the_first_reply_which_may_have_waited_for_the_model_to_load_is_not_timed():
    async def scenario() -> list[float]:
        workers = Workers()
        workers.release.set()
        coalescer = Coalescer(workers, _target())
        seen = []
        for value in range(3):
            await asyncio.wait_for(coalescer.submit(_request(value)), 5)
            seen.append(coalescer.batch_seconds)
        return seen

    first, second, third = asyncio.run(scenario())
    assert first == 0.0 and second > 0 and third > 0


def test_bodies_ready_together_are_decoded_in_turns_of_the_loop_of_their_own():
    """A request arriving while two bodies wait to be decoded is read between the two decodes."""

    gateway = Gateway()

    async def scenario() -> list[str]:
        order: list[str] = []

        async def decode(name: str, size: int = DECODE_TURN_BYTES) -> None:
            async with gateway.decode_turn(size):
                order.append(name)

        first, second = asyncio.create_task(decode("first")), asyncio.create_task(decode("second"))
        await asyncio.sleep(0)  # both start in this turn: the first decodes, the second waits
        asyncio.get_running_loop().call_soon(order.append, "arrival")  # new I/O, read in the next turn
        await asyncio.gather(first, second)
        # Without turns: first, second, arrival (back to back in one turn, the arrival after both).
        return order

    assert asyncio.run(scenario()) == ["first", "arrival", "second"]

    async def small_ones() -> list[str]:
        order: list[str] = []

        async def decode(name: str) -> None:
            async with gateway.decode_turn(DECODE_TURN_BYTES - 1):
                order.append(name)

        tasks = [asyncio.create_task(decode("first")), asyncio.create_task(decode("second"))]
        await asyncio.sleep(0)
        asyncio.get_running_loop().call_soon(order.append, "arrival")
        await asyncio.gather(*tasks)
        return order

    # Small bodies take no turn: they decode in microseconds, back to back.
    assert asyncio.run(small_ones()) == ["first", "second", "arrival"]
    # Another event loop (a test client runs one per request) gets a lock of its own.
    assert asyncio.run(scenario()) == ["first", "arrival", "second"]
