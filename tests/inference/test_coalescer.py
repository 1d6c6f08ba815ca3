"""The gateway's coalescer: the batching delay timer, batch sizes and INFERENCE_MAX_IN_FLIGHT.

The workers are replaced by a fake `exchange` that records each batch and answers when
the test lets it, so the order of events is decided by the test, not by the machine's speed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from inference.gateway import Coalescer, Gateway, HttpError
from inference.routes import Target
from inference.wire import BatchReply, Failure, Outputs


def target(*, max_batch_size: int = 8, max_batch_delay_ms: int = 0) -> Target:
    return Target(
        version_id=1, model_name="iris", version=1, status="ready", format="torchscript", signature={},
        queue="inference", max_batch_size=max_batch_size, max_batch_delay_ms=max_batch_delay_ms, ready_versions=(1,),
    )  # fmt: skip


def rows(value: float, count: int = 1) -> dict[str, np.ndarray]:
    return {"features": np.full((count, 4), value, dtype=np.float32)}


def reply_to(requests: list[dict[str, np.ndarray]]) -> BatchReply:
    """What a worker answers for a batch: one answer per request (here, its first value), and timings."""
    answers: list[Outputs | Failure] = [Outputs({"first": tensors["features"][0, :1]}) for tensors in requests]
    return BatchReply("fake-batch", answers, 0.1, 0.2, sum(len(t["features"]) for t in requests), "fake")


def first(answered: tuple[Outputs, BatchReply]) -> float:
    """The value a request was answered with (what `reply_to` echoed of it)."""
    return float(answered[0].tensors["first"][0])


@dataclass
class FakeWorkers:
    """Records every batch sent; answers each once `release()` is called (or at once when `auto`)."""

    auto: bool = False
    fail_with: HttpError | None = None
    batches: list[list[float]] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    deadlines: list[float | None] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    _gates: list[asyncio.Event] = field(default_factory=list)

    async def exchange(
        self,
        target: Target,
        requests: list[dict[str, np.ndarray]],
        parameters: list[dict[str, Any]],
        deadline: float | None = None,
    ) -> BatchReply:
        self.deadlines.append(deadline)
        self.batches.append([float(t["features"][0, 0]) for t in requests])
        self.sent_at.append(asyncio.get_running_loop().time())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        gate = asyncio.Event()
        self._gates.append(gate)
        if self.auto:
            gate.set()
        try:
            # Like a real exchange (a Redis round trip), it gives the loop a turn before answering.
            await asyncio.sleep(0)
            await gate.wait()
            if self.fail_with is not None:
                raise self.fail_with
            return reply_to(requests)
        finally:
            self.in_flight -= 1

    def release(self) -> None:
        for gate in self._gates:
            gate.set()


def coalescer(workers: FakeWorkers, **fields: Any) -> Coalescer:
    gateway = Gateway()
    gateway.exchange = workers.exchange  # type: ignore[method-assign]
    return Coalescer(gateway, target(**fields))


async def settle() -> None:
    """Let every task that can run, run (a few loop turns; no wall-clock wait)."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_without_a_delay_the_first_request_goes_at_once_and_later_ones_wait_for_it(settings):
    settings.INFERENCE_MAX_IN_FLIGHT = 1

    async def scenario() -> FakeWorkers:
        workers = FakeWorkers()
        queue = coalescer(workers)
        futures = [queue.submit(rows(i)) for i in range(5)]
        await settle()
        # One batch in flight; the other four wait for it rather than for a timer.
        assert workers.batches == [[0.0]] and len(queue.waiting) == 4 and queue.timer is None
        workers.release()
        await settle()
        workers.release()
        answers = await asyncio.gather(*futures)
        assert [first(answer) for answer in answers] == [0.0, 1.0, 2.0, 3.0, 4.0]
        reply = answers[0][1]
        assert (reply.queue_ms, reply.compute_ms, reply.batch_rows, reply.worker) == (0.1, 0.2, 1, "fake")
        assert answers[1][1].batch_rows == 4
        return workers

    workers = asyncio.run(scenario())
    assert workers.batches == [[0.0], [1.0, 2.0, 3.0, 4.0]]
    assert workers.most_in_flight == 1


def test_a_batching_delay_holds_requests_until_the_timer_fires_then_sends_them_together(settings):
    settings.INFERENCE_MAX_IN_FLIGHT = 1
    delay_ms = 200

    async def scenario() -> tuple[FakeWorkers, float]:
        loop = asyncio.get_running_loop()
        workers = FakeWorkers(auto=True)
        queue = coalescer(workers, max_batch_delay_ms=delay_ms)
        first_submitted = loop.time()
        futures = [queue.submit(rows(i)) for i in range(3)]
        await settle()
        assert workers.batches == [] and queue.timer is not None, "nothing is sent before the delay ends"
        answers = await asyncio.gather(*futures)
        assert [first(answer) for answer in answers] == [0.0, 1.0, 2.0]
        assert queue.timer is None and queue.in_flight == 0
        return workers, first_submitted

    workers, first_submitted = asyncio.run(scenario())
    assert workers.batches == [[0.0, 1.0, 2.0]]
    # The timer never fires early (a busy machine can only make it later).
    assert workers.sent_at[0] - first_submitted >= delay_ms / 1000 - 0.005


def test_a_timer_batch_is_cut_at_max_batch_size_rows_and_the_rest_follows_in_order(settings):
    settings.INFERENCE_MAX_IN_FLIGHT = 1

    async def scenario() -> FakeWorkers:
        workers = FakeWorkers(auto=True)
        queue = coalescer(workers, max_batch_size=4, max_batch_delay_ms=20)
        # Rows per request: 1, 2, 2, 3, 1 (a request is never split across batches).
        sizes = [1, 2, 2, 3, 1]
        futures = [queue.submit(rows(i, count)) for i, count in enumerate(sizes)]
        await asyncio.gather(*futures)
        return workers

    workers = asyncio.run(scenario())
    assert workers.batches == [[0.0, 1.0], [2.0], [3.0, 4.0]]
    assert workers.most_in_flight == 1


def test_more_batches_in_flight_send_new_requests_at_once_until_the_limit(settings):
    settings.INFERENCE_MAX_IN_FLIGHT = 2

    async def scenario() -> FakeWorkers:
        workers = FakeWorkers()
        queue = coalescer(workers)
        futures = [queue.submit(rows(i)) for i in range(5)]
        await settle()
        # Two single-request batches fly; the other three wait for whichever ends first.
        assert workers.batches == [[0.0], [1.0]] and workers.in_flight == 2 and len(queue.waiting) == 3
        workers.release()
        await settle()
        assert workers.batches == [[0.0], [1.0], [2.0, 3.0, 4.0]]
        workers.release()
        answers = await asyncio.gather(*futures)
        assert [first(answer) for answer in answers] == [0.0, 1.0, 2.0, 3.0, 4.0]
        return workers

    workers = asyncio.run(scenario())
    assert workers.most_in_flight == 2


def test_with_a_delay_and_a_free_slot_a_second_batch_starts_its_own_timer(settings):
    settings.INFERENCE_MAX_IN_FLIGHT = 2

    async def scenario() -> FakeWorkers:
        workers = FakeWorkers()
        queue = coalescer(workers, max_batch_delay_ms=20)
        first = [queue.submit(rows(i)) for i in range(2)]
        while not workers.batches:
            await asyncio.sleep(0.005)
        # The first batch is in flight and a slot is free: the next requests get a timer of their own.
        second = [queue.submit(rows(i)) for i in range(2, 4)]
        assert queue.timer is not None
        while len(workers.batches) < 2:
            await asyncio.sleep(0.005)
        assert workers.batches == [[0.0, 1.0], [2.0, 3.0]] and workers.in_flight == 2
        # Both slots taken: no timer; these wait for a slot and then go without a delay.
        third = [queue.submit(rows(i)) for i in range(4, 6)]
        assert queue.timer is None
        workers.release()
        await asyncio.gather(*first, *second)
        await settle()
        assert workers.batches[2] == [4.0, 5.0]
        workers.release()
        await asyncio.gather(*third)
        return workers

    workers = asyncio.run(scenario())
    assert workers.most_in_flight == 2


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_still_goes(settings):
    settings.INFERENCE_MAX_IN_FLIGHT = 1

    async def scenario() -> tuple[list[Any], FakeWorkers]:
        workers = FakeWorkers(fail_with=HttpError(504, "No worker answered"))
        queue = coalescer(workers)
        futures = [queue.submit(rows(i)) for i in range(3)]
        await settle()
        workers.release()
        await settle()
        workers.fail_with = None
        workers.release()
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        return outcomes, workers

    outcomes, workers = asyncio.run(scenario())
    assert isinstance(outcomes[0], HttpError) and outcomes[0].status == 504
    # The failure was the first batch's alone: the requests that waited were sent and answered.
    assert [first(outcome) for outcome in outcomes[1:]] == [1.0, 2.0]
    assert workers.batches == [[0.0], [1.0, 2.0]]


@pytest.mark.parametrize("in_flight", [1, 3])
def test_a_burst_is_answered_completely_and_never_exceeds_the_in_flight_limit(settings, in_flight):
    settings.INFERENCE_MAX_IN_FLIGHT = in_flight

    async def scenario() -> FakeWorkers:
        workers = FakeWorkers(auto=True)
        queue = coalescer(workers, max_batch_size=4)
        futures = [queue.submit(rows(i)) for i in range(40)]
        answers = await asyncio.gather(*futures)
        assert [first(answer) for answer in answers] == [float(i) for i in range(40)]
        return workers

    workers = asyncio.run(scenario())
    assert workers.most_in_flight == in_flight
    assert all(len(batch) <= 4 for batch in workers.batches)
    assert sorted(value for batch in workers.batches for value in batch) == [float(i) for i in range(40)]
