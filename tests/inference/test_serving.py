"""The serving loop's answers that need no model: expired batches, unavailable models, bad bytes."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

import numpy as np
import pytest

from core import redis as shared_redis
from inference import serving, wire
from inference.cache import ModelUnavailable
from inference.wire import BatchReply, BatchRequest, Failure

X = {"features": np.zeros((1, 4), dtype=np.float32)}


@pytest.fixture
def loop(settings):
    settings.INFERENCE_REDIS_URL = "redis://127.0.0.1:1/0"  # never reached by these tests
    yield serving.ServingLoop(["inference"])
    shared_redis.reset()


def _batch(batch_id: str, *, deadline: float, requests: int = 1) -> BatchRequest:
    return BatchRequest(batch_id, "maas:reply:test", 7, time.time() - 0.5, deadline, [X] * requests)


def test_a_batch_past_its_deadline_is_answered_504_without_running_the_model(loop, monkeypatch):
    monkeypatch.setattr(serving, "model_cache", lambda: pytest.fail("the model was asked for"))
    ((message, reply),) = loop.handle([_batch("late", deadline=time.time() - 1, requests=2)])
    assert message.batch_id == reply.batch_id == "late"
    assert reply.answers == [Failure("The request waited in the queue past its deadline.", 504)] * 2
    assert reply.queue_ms >= 500 and reply.worker == loop.identity


def test_a_model_the_worker_cannot_load_is_answered_503(loop, monkeypatch):
    class Broken:
        def get(self, version_id: int) -> None:
            raise ModelUnavailable("artifact missing")

    monkeypatch.setattr(serving, "model_cache", Broken)
    ((_, reply),) = loop.handle([_batch("b", deadline=time.time() + 30)])
    assert reply.answers == [Failure("This worker cannot serve the model: artifact missing", 503)]
    assert BatchReply.decode(reply.encode()) == reply


def test_malformed_messages_are_dropped_and_logged_and_the_others_kept(caplog):
    good = _batch("good", deadline=time.time() + 30).encode()
    with caplog.at_level(logging.ERROR, logger="inference.serving"):
        decoded = serving._decoded([b"\x93garbage", good, b"{}"])
    assert [message.batch_id for message in decoded] == ["good"]
    assert caplog.text.count("dropped a malformed prediction message") == 2


def test_the_loop_records_the_batches_it_took_before_computing_them_and_forgets_them_when_it_stops(
    generation_redis, monkeypatch
):
    computing, release = threading.Event(), threading.Event()

    class SlowCache:
        """The model takes its time: the batches are being computed until `release`."""

        def get(self, version_id: int) -> None:
            computing.set()
            release.wait(10)
            raise ModelUnavailable("released")

        def loaded(self) -> list[Any]:
            return []

        def loading(self) -> list[int]:
            return []

    monkeypatch.setattr(serving, "model_cache", SlowCache)
    redis = shared_redis.client()
    redis.lpush(wire.queue_key("inference"), *(_batch(b, deadline=time.time() + 30).encode() for b in ("b1", "b2")))
    loop = serving.ServingLoop(["inference"])
    loop.start()
    try:
        assert computing.wait(10)
        # Both popped in one go, recorded (by the loop's claim thread) while the model runs: a gateway
        # seeing this worker dead now knows.
        deadline = time.monotonic() + 5
        while redis.hget(wire.TAKEN_KEY, loop.identity) != b"b1,b2":
            assert time.monotonic() < deadline, redis.hget(wire.TAKEN_KEY, loop.identity)
            time.sleep(0.01)
        release.set()
        replies = [BatchReply.decode(cast(Any, redis.brpop(["maas:reply:test"], timeout=10))[1]) for _ in range(2)]
        assert sorted(reply.batch_id for reply in replies) == ["b1", "b2"]
    finally:
        release.set()
        loop.stopping.set()
        loop.join(10)
    assert redis.hget(wire.TAKEN_KEY, loop.identity) is None and redis.hget(wire.WORKERS_KEY, loop.identity) is None
