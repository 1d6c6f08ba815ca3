"""The throttle primitive behind rate limits and sign-in throttling, against a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from core import redis as shared_redis
from core.errors import ServiceUnavailable, TooManyRequests
from core.throttle import (
    Count,
    Throttle,
    ThrottleUnavailable,
    rate_hit,
    rate_hit_async,
    tokens_check,
    tokens_check_async,
)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def throttle(redis_url: str, clock: FakeClock) -> Throttle:
    return Throttle("test:", 60, clock=clock)


def test_a_window_opens_at_the_first_hit_and_lasts_its_length(throttle, clock):
    client = shared_redis.client()
    assert throttle.hit(client, "t") == [Count(1, 60)]
    clock.now += 20.25
    assert throttle.hit(client, "t") == [Count(2, 40)]  # 39.75 s left: Retry-After rounds up
    clock.now += 39.5
    assert throttle.hit(client, "t") == [Count(3, 1)]
    clock.now += 0.25  # exactly 60 s after the first hit: a new window
    assert throttle.hit(client, "t") == [Count(1, 60)]


def test_peek_counts_nothing_and_creates_nothing(throttle):
    client = shared_redis.client()
    assert throttle.peek(client, "t") == [Count(0, 60)]
    assert client.keys("test:*") == []
    throttle.hit(client, "t")
    assert throttle.peek(client, "t") == [Count(1, 60)]
    assert throttle.peek(client, "t") == [Count(1, 60)]


def test_several_buckets_are_counted_in_one_call_each_on_its_own_window(throttle, clock):
    client = shared_redis.client()
    throttle.hit(client, "a")
    clock.now += 30
    assert throttle.hit(client, "a", "b") == [Count(2, 30), Count(1, 60)]
    clock.now += 30
    assert throttle.peek(client, "a", "b") == [Count(0, 60), Count(1, 30)]


def test_clear_forgets_a_bucket(throttle):
    client = shared_redis.client()
    throttle.hit(client, "a", "b")
    throttle.clear(client, "a")
    assert throttle.peek(client, "a", "b") == [Count(0, 60), Count(1, 60)]


def test_a_clock_slightly_behind_keeps_the_window_but_never_promises_more_than_one(redis_url, clock):
    client = shared_redis.client()
    ahead = Throttle("test:", 60, clock=FakeClock(clock.now + 2))
    behind = Throttle("test:", 60, clock=clock)
    ahead.hit(client, "t")
    assert behind.hit(client, "t") == [Count(2, 60)]  # 62 s by its own clock, capped


def test_a_window_from_a_clock_that_jumped_back_far_is_reopened(redis_url, clock):
    client = shared_redis.client()
    Throttle("test:", 60, clock=FakeClock(clock.now + 3600)).hit(client, "t")
    assert Throttle("test:", 60, clock=clock).hit(client, "t") == [Count(1, 60)]


def test_rate_hit_refuses_past_the_limit_with_the_time_left(throttle, clock):
    client = shared_redis.client()
    for _ in range(3):
        rate_hit(client, "token 1", 3, throttle)
    clock.now += 45.5
    with pytest.raises(TooManyRequests) as refused:
        rate_hit(client, "token 1", 3, throttle)
    assert refused.value.headers == {"Retry-After": "15"}
    assert "Rate limit of 3 requests per minute exceeded for token 1; retry in 15s" in refused.value.message
    rate_hit(client, "token 2", 3, throttle)  # other tokens count apart
    clock.now += 14.5
    rate_hit(client, "token 1", 3, throttle)  # the next window


def test_rate_hit_async_shares_the_count_with_rate_hit(throttle):
    async def hit_async() -> None:
        await rate_hit_async(shared_redis.async_client(), "token 1", 2, throttle)

    rate_hit(shared_redis.client(), "token 1", 2, throttle)
    asyncio.run(hit_async())
    with pytest.raises(TooManyRequests):
        asyncio.run(hit_async())
    with pytest.raises(TooManyRequests):
        rate_hit(shared_redis.client(), "token 1", 2, throttle)


def test_the_script_is_loaded_again_after_redis_forgot_it(throttle):
    client = shared_redis.client()
    throttle.hit(client, "t")
    client.script_flush()
    assert throttle.hit(client, "t") == [Count(2, 60)]


def test_without_redis_rate_limits_answer_503(settings, clock):
    settings.INFERENCE_REDIS_URL = "redis://127.0.0.1:1/0"
    throttle = Throttle("test:", 60, clock=clock)
    with pytest.raises(ThrottleUnavailable, match="rate limiter \\(Redis\\) is unavailable") as down:
        rate_hit(shared_redis.client(), "token 1", 3, throttle)
    assert isinstance(down.value, ServiceUnavailable) and down.value.status_code == 503

    async def hit_async() -> None:
        await rate_hit_async(shared_redis.async_client(), "token 1", 3, throttle)

    with pytest.raises(ThrottleUnavailable):
        asyncio.run(hit_async())
    shared_redis.reset()


def test_charge_counts_a_cost_at_once_in_the_window_the_first_charge_opens(throttle, clock):
    client = shared_redis.client()
    assert throttle.charge(client, "t", 40) == Count(40, 60)
    clock.now += 10.5
    assert throttle.charge(client, "t", 25) == Count(65, 50)  # 49.5 s left: rounds up
    assert throttle.peek(client, "t") == [Count(65, 50)]
    clock.now += 49.5  # a minute after the first charge: the next window
    assert throttle.peek(client, "t") == [Count(0, 60)]
    assert throttle.charge(client, "t", 7) == Count(7, 60)


def test_tokens_check_refuses_once_the_window_reached_the_limit_until_it_closes(throttle, clock):
    client = shared_redis.client()
    tokens_check(client, "token 1", 100, throttle)  # nothing used: admitted, and nothing stored
    assert client.keys("test:*") == []
    throttle.charge(client, "token 1", 99)
    tokens_check(client, "token 1", 100, throttle)  # 99 < 100: one more request may go
    clock.now += 20.25
    throttle.charge(client, "token 1", 30)  # that request overshot (charged after its answer)
    with pytest.raises(TooManyRequests) as refused:
        tokens_check(client, "token 1", 100, throttle)
    assert refused.value.headers == {"Retry-After": "40"}  # 39.75 s left in the window
    assert refused.value.status_code == 429
    assert "Token limit of 100 tokens per minute reached for token 1 (129 used" in refused.value.message
    tokens_check(client, "token 2", 100, throttle)  # other tokens count apart
    clock.now += 39.75
    tokens_check(client, "token 1", 100, throttle)  # the window closed


def test_tokens_check_async_reads_what_charge_counted(throttle):
    async def check_async() -> None:
        await tokens_check_async(shared_redis.async_client(), "token 1", 10, throttle)

    asyncio.run(check_async())

    async def charge_async() -> Count:
        return await throttle.charge_async(shared_redis.async_client(), "token 1", 10)

    assert asyncio.run(charge_async()).count == 10
    with pytest.raises(TooManyRequests):
        asyncio.run(check_async())
