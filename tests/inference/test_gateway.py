"""The gateway's coalescer against a stand-in for the workers: batching and reply handling."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from inference.gateway import Coalescer, HttpError, Target
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

    async def exchange(self, target: Target, requests: list[Tensors]) -> BatchReply:
        self.batches.append(len(requests))
        await self.release.wait()
        answers: list[Outputs | Failure] = [Outputs(tensors) for tensors in requests[self.drop :]]
        return BatchReply("b", answers, 1.0, 2.0, len(requests), "w")


def _request(value: float) -> Tensors:
    return {"x": np.full((1, 2), value, dtype=np.float32)}


def test_requests_that_arrive_while_a_batch_is_in_flight_go_together_in_the_next(settings):
    settings.INFERENCE_MAX_IN_FLIGHT = 1

    async def scenario() -> tuple[list[int], list[Any]]:
        workers = Workers()
        coalescer = Coalescer(workers, _target())
        futures = [coalescer.submit(_request(i)) for i in range(4)]
        await asyncio.sleep(0)
        workers.release.set()
        return workers.batches, await asyncio.gather(*futures)

    batches, answered = asyncio.run(scenario())
    assert batches == [1, 3]
    for i, (answer, reply) in enumerate(answered):
        assert isinstance(answer, Outputs) and answer.tensors["x"][0, 0] == i
        assert reply.batch_rows == (1 if i == 0 else 3)


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


def test_a_batching_delay_holds_requests_until_the_timer_fires(settings):
    settings.INFERENCE_MAX_IN_FLIGHT = 1

    async def scenario() -> list[int]:
        workers = Workers()
        workers.release.set()
        coalescer = Coalescer(workers, _target(max_batch_delay_ms=200))
        futures = [coalescer.submit(_request(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert workers.batches == []  # nothing sent before the delay
        await asyncio.gather(*futures)
        return workers.batches

    assert asyncio.run(scenario()) == [3]


@pytest.mark.parametrize("limit", [1, 3])
def test_max_batch_size_splits_what_waits(settings, limit):
    settings.INFERENCE_MAX_IN_FLIGHT = 5

    async def scenario() -> list[int]:
        workers = Workers()
        coalescer = Coalescer(workers, _target(max_batch_size=limit, max_batch_delay_ms=20))
        futures = [coalescer.submit(_request(i)) for i in range(5)]
        await asyncio.sleep(0.05)
        workers.release.set()
        await asyncio.gather(*futures)
        return workers.batches

    assert asyncio.run(scenario()) == ([1] * 5 if limit == 1 else [3, 2])
