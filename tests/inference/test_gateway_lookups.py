"""The gateway's lookups: concurrent requests for the same user or route share one database query."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from core.errors import NotFound
from inference import gateway as gateway_module
from inference.gateway import Gateway, HttpError, WorkerView
from tests.inference.test_coalescer import target

CALLER = SimpleNamespace(pk=7, is_authenticated=True)


class SlowDatabase:
    """Stands in for `gateway.database`: counts the queries, each answering after `delay` seconds."""

    def __init__(self, answer: Any, delay: float = 0.05) -> None:
        self.answer, self.delay, self.queries = answer, delay, 0

    async def __call__(self, function: Any, *args: Any) -> Any:
        self.queries += 1
        await asyncio.sleep(self.delay)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_concurrent_requests_for_one_route_share_one_query(monkeypatch):
    database = SlowDatabase(target())
    monkeypatch.setattr(gateway_module, "database", database)

    async def scenario() -> list[Any]:
        gateway = Gateway()
        return await asyncio.gather(*(gateway.target(CALLER, "iris", None) for _ in range(32)))

    answers = asyncio.run(scenario())
    assert database.queries == 1
    assert all(answer.model_name == "iris" for answer in answers)


def test_a_failed_shared_lookup_fails_every_waiter_and_is_not_kept(monkeypatch):
    database = SlowDatabase(NotFound("Model 'iris' not found."))
    monkeypatch.setattr(gateway_module, "database", database)

    async def scenario() -> tuple[list[Any], Gateway]:
        gateway = Gateway()
        lookups = (gateway.target(CALLER, "iris", None) for _ in range(8))
        outcomes = await asyncio.gather(*lookups, return_exceptions=True)
        return outcomes, gateway

    outcomes, gateway = asyncio.run(scenario())
    assert database.queries == 1
    assert all(isinstance(o, HttpError) and o.status == 404 and "iris" in o.message for o in outcomes)
    assert gateway.lookups == {}
    # The next request asks again.
    with pytest.raises(HttpError):
        asyncio.run(gateway.target(CALLER, "iris", None))
    assert database.queries == 2


def test_one_waiter_cancelled_leaves_the_others_their_answer(monkeypatch):
    database = SlowDatabase(target(), delay=0.1)
    monkeypatch.setattr(gateway_module, "database", database)

    async def scenario() -> list[Any]:
        gateway = Gateway()
        first = asyncio.ensure_future(gateway.target(CALLER, "iris", None))
        others = [asyncio.ensure_future(gateway.target(CALLER, "iris", None)) for _ in range(3)]
        await asyncio.sleep(0.02)
        first.cancel()
        return await asyncio.gather(*others)

    answers = asyncio.run(scenario())
    assert database.queries == 1 and len(answers) == 3


def test_a_refusal_for_want_of_a_worker_looks_again_sooner_than_a_live_answer(monkeypatch):
    """A worker that has just started is seen by every web process at once (not after WATCH_SECONDS)."""

    class LookedAgain(Exception):
        """Raised where the gateway reaches for Redis to read the heartbeats afresh."""

    def connect() -> Any:
        raise LookedAgain

    beat = SimpleNamespace(queues=["inference"])

    async def scenario() -> None:
        gateway = Gateway()
        monkeypatch.setattr(gateway, "_connect", connect)
        read_at = gateway_module.time.monotonic() - 0.1  # older than ABSENT_WATCH_SECONDS, younger than WATCH_SECONDS
        gateway.workers = WorkerView(read_at)
        with pytest.raises(LookedAgain):  # no worker seen 0.1 s ago: looked at again
            await gateway.live_workers("inference")
        gateway.workers = WorkerView(read_at, [beat])  # type: ignore[list-item]
        assert await gateway.live_workers("inference") == [beat]  # a live one seen 0.1 s ago: reused
        with pytest.raises(LookedAgain):  # but not for a queue nobody served then
            await gateway.live_workers("gpu")

    asyncio.run(scenario())
