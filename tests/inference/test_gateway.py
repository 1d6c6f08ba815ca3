"""The gateway's handling of worker replies (batching itself: test_coalescer.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from inference.gateway import Coalescer, HttpError
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
