"""Admission control's pure parts, and the gateway's coalescer and submit with fake workers (no wall clock waits)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from inference import admission
from inference.gateway import Gateway, HttpError, read_body
from tests.inference.test_coalescer import FakeWorkers, coalescer, rows, settle, target

BATCHING = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]}
FIXED = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [8, 4]}]}


def features(count: int) -> dict[str, np.ndarray]:
    return {"features": np.zeros((count, 4), dtype=np.float32)}


def test_a_request_over_max_batch_size_is_refused_naming_the_limit():
    assert admission.rows_refusal(BATCHING, features(4), 4, "iris", 2) is None
    message = admission.rows_refusal(BATCHING, features(5), 4, "iris", 2)
    assert message is not None and "5 rows" in message and "at most 4" in message and "max_batch_size" in message
    # A fixed first dimension is the signature's business, not a batch: no limit applies.
    assert admission.rows_refusal(FIXED, features(8), 4, "iris", 2) is None


@pytest.mark.parametrize(
    ("waiting", "in_flight", "max_in_flight", "expected"),
    [
        (0, 0, 1, 1.0),  # the next batch goes at once: one batch time
        (0, 1, 1, 2.0),  # one in flight: wait for it, then its own
        (31, 1, 1, 2.0),  # 31 + it fill one batch of 32
        (32, 1, 1, 3.0),  # 33 rows: a second batch
        (64, 2, 2, 3.0),  # three batches ahead, two at a time, both slots busy
    ],
)
def test_expected_wait_counts_batches_and_waves(waiting, in_flight, max_in_flight, expected):
    assert admission.expected_wait(waiting, 32, in_flight, max_in_flight, 1.0) == expected


def test_retry_after_is_whole_seconds_within_bounds():
    assert admission.retry_after(0.0) == admission.RETRY_AFTER_MIN
    assert admission.retry_after(2.1) == 3
    assert admission.retry_after(1e6) == admission.RETRY_AFTER_MAX


def test_a_backlog_admits_up_to_its_limit_and_learns_the_latency(settings):
    settings.INFERENCE_MAX_QUEUED = 2
    backlog = admission.Backlog()
    assert backlog.admit() == (True, 1) and backlog.admit() == (True, 2)
    assert backlog.admit() == (False, 2)
    backlog.release(time.monotonic() - 3.5)
    assert backlog.count == 1 and backlog.retry_after() == 4
    assert backlog.admit() == (True, 2)


def test_a_request_past_its_deadline_in_the_queue_is_answered_504_and_never_sent(settings):
    settings.INFERENCE_MAX_IN_FLIGHT = 1

    async def scenario() -> tuple[FakeWorkers, list[Any]]:
        workers = FakeWorkers()
        queue = coalescer(workers)
        now = time.time()
        first = queue.submit(rows(0), deadline=now + 60)
        expired = queue.submit(rows(1), deadline=now + 0.01)
        live = queue.submit(rows(2), deadline=now + 30)
        await settle()
        await asyncio.sleep(0.02)  # the second one's deadline passes while the first batch is out
        workers.release()
        await settle()
        workers.release()
        return workers, await asyncio.gather(first, expired, live, return_exceptions=True)

    workers, (first, expired, live) = asyncio.run(scenario())
    assert workers.batches == [[0.0], [2.0]]  # the expired request never went to a worker
    assert isinstance(expired, HttpError) and expired.status == 504 and "not sent" in expired.message
    assert not isinstance(first, Exception) and not isinstance(live, Exception)
    # A batch carries the earliest deadline of its requests.
    assert workers.deadlines[1] == pytest.approx(time.time() + 30, abs=5)


def test_a_batch_carries_the_earliest_deadline_of_its_requests(settings):
    settings.INFERENCE_MAX_IN_FLIGHT = 1

    async def scenario() -> FakeWorkers:
        workers = FakeWorkers(auto=True)
        queue = coalescer(workers, max_batch_delay_ms=5)
        futures = [queue.submit(rows(i), deadline=deadline) for i, deadline in enumerate((500.0e9, 100.0e9, 300.0e9))]
        await asyncio.gather(*futures)
        return workers

    workers = asyncio.run(scenario())
    assert workers.batches == [[0.0, 1.0, 2.0]] and workers.deadlines == [100.0e9]


def gateway_with(workers: FakeWorkers) -> Gateway:
    gateway = Gateway()
    gateway.exchange = workers.exchange  # type: ignore[method-assign]
    return gateway


def test_the_gateway_refuses_past_the_backlog_at_once_with_retry_after(settings):
    settings.INFERENCE_MAX_QUEUED = 2
    settings.INFERENCE_MAX_IN_FLIGHT = 1
    served = replace(target(), version_id=9001, signature=BATCHING)

    async def scenario() -> tuple[list[asyncio.Task[Any]], HttpError]:
        workers = FakeWorkers()
        gateway = gateway_with(workers)
        admitted = [asyncio.create_task(gateway.submit(served, rows(i))) for i in range(2)]
        await settle()
        with pytest.raises(HttpError) as refused:
            await gateway.submit(served, rows(3))
        workers.release()
        await settle()
        workers.release()
        await asyncio.gather(*admitted)
        # Places are given back as requests are answered.
        assert admission.backlog_of(9001).count == 0
        return admitted, refused.value

    _, refused = asyncio.run(scenario())
    assert refused.status == 503 and "INFERENCE_MAX_QUEUED" in refused.message
    assert refused.headers["Retry-After"].isdigit()


@pytest.mark.parametrize("held", [False, True], ids=["own-place", "place-held-while-its-body-was-read"])
def test_the_gateway_refuses_a_request_the_queue_would_make_late(settings, held):
    """Late is checked as submit takes its own place, and again for a place taken before the body:
    the queue may have grown while that body was read."""
    settings.INFERENCE_MAX_QUEUED = 100
    settings.INFERENCE_MAX_IN_FLIGHT = 1
    settings.INFERENCE_TIMEOUT_SECONDS = 2.0
    served = replace(target(max_batch_size=1), version_id=9002, signature=BATCHING)

    async def scenario() -> HttpError:
        workers = FakeWorkers()
        gateway = gateway_with(workers)
        # Held: the place is taken while the queue is empty, as a request's headers arrive.
        with gateway.place(served) if held else contextlib.nullcontext():
            admitted = [asyncio.create_task(gateway.submit(served, rows(i))) for i in range(3)]
            await settle()
            # Batches of one row that take a second each: a fourth request would wait ~4 s.
            gateway.coalescers[9002].batch_seconds = 1.0
            with pytest.raises(HttpError) as refused:
                await asyncio.wait_for(gateway.submit(served, rows(9)), 5)
        for _ in range(3):
            workers.release()
            await settle()
        await asyncio.gather(*admitted)
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status == 503 and "past its deadline" in refused.message and refused.headers["Retry-After"]


def test_the_gateway_refuses_400_a_request_over_max_batch_size():
    served = replace(target(max_batch_size=2), version_id=9003, signature=BATCHING)
    with pytest.raises(HttpError) as refused:
        asyncio.run(gateway_with(FakeWorkers(auto=True)).submit(served, rows(0, count=3)))
    assert refused.value.status == 400 and "at most 2" in refused.value.message


def test_a_place_is_held_from_before_the_body_and_the_submit_inside_uses_it(settings):
    settings.INFERENCE_MAX_QUEUED = 1
    served = replace(target(), version_id=9004, signature=BATCHING)

    async def scenario() -> HttpError:
        gateway = gateway_with(FakeWorkers(auto=True))
        backlog = admission.backlog_of(9004)
        with gateway.place(served):
            # The request being read holds the only place: a second is refused before its body.
            assert backlog.count == 1
            with pytest.raises(HttpError) as refused, gateway.place(served):
                pass  # pragma: no cover - refused on entry
            assert backlog.count == 1
            # Its own submit does not ask for a second place (it would be refused: the limit is 1).
            answer, _ = await gateway.submit(served, rows(0))
            assert answer.tensors
        assert backlog.count == 0 and admission.held.get() is None
        # Outside a block, submit takes (and gives back) a place of its own.
        await gateway.submit(served, rows(1))
        assert backlog.count == 0
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status == 503 and "INFERENCE_MAX_QUEUED" in refused.message
    assert refused.headers["Retry-After"].isdigit()


def test_a_body_that_has_not_arrived_by_the_deadline_is_refused_408(settings):
    settings.INFERENCE_TIMEOUT_SECONDS = 0.2
    first_part = {"type": "http.request", "body": b'{"inputs": ', "more_body": True}

    async def scenario() -> tuple[HttpError, float]:
        parts = [first_part]

        async def receive() -> dict[str, Any]:
            if parts:
                return parts.pop()
            await asyncio.Event().wait()  # the rest never comes
            raise AssertionError("unreachable")

        admission.arrived.set(time.time())
        started = time.monotonic()
        with pytest.raises(HttpError) as refused:
            await read_body({b"content-length": b"1000"}, receive)
        return refused.value, time.monotonic() - started

    refused, seconds = asyncio.run(scenario())
    assert refused.status == 408 and "INFERENCE_TIMEOUT_SECONDS" in refused.message and "11 of it" in refused.message
    assert 0.15 < seconds < 2
