"""The Redis client factory: one client per URL and timeout, per process or event loop."""

from __future__ import annotations

import asyncio

import pytest

from core import redis as shared_redis


def test_unix_socket_urls_are_spelled_for_redis_py(settings):
    settings.INFERENCE_REDIS_URL = "redis+socket:///run/maas/redis.sock"
    assert shared_redis.redis_url() == "unix:///run/maas/redis.sock"
    settings.INFERENCE_REDIS_URL = "redis://cache:6379/2"
    assert shared_redis.redis_url() == "redis://cache:6379/2"


def test_no_configured_redis_is_a_connection_error(settings):
    settings.INFERENCE_REDIS_URL = ""
    with pytest.raises(shared_redis.RedisUnconfigured, match="INFERENCE_REDIS_URL"):
        shared_redis.client()
    assert issubclass(shared_redis.RedisUnconfigured, shared_redis.redis.ConnectionError)


def test_clients_are_cached_per_url_and_timeout_until_reset(settings):
    settings.INFERENCE_REDIS_URL = "redis://127.0.0.1:1/0"
    first = shared_redis.client()
    assert shared_redis.client() is first
    blocking = shared_redis.client(timeout=None)
    assert blocking is not first and blocking.connection_pool.connection_kwargs["socket_timeout"] is None
    settings.INFERENCE_REDIS_URL = "redis://127.0.0.1:2/0"
    elsewhere = shared_redis.client()
    assert elsewhere is not first and elsewhere.connection_pool.connection_kwargs["port"] == 2
    shared_redis.reset()
    assert shared_redis.client() is not elsewhere
    shared_redis.reset()


def test_async_clients_belong_to_their_event_loop(settings):
    settings.INFERENCE_REDIS_URL = "redis://127.0.0.1:1/0"

    async def twice() -> tuple[object, object]:
        return shared_redis.async_client(), shared_redis.async_client()

    first, again = asyncio.run(twice())
    other, _ = asyncio.run(twice())
    assert first is again and other is not first
    shared_redis.reset()


def test_a_client_reaches_the_configured_redis(redis_url):
    client = shared_redis.client()
    client.set("core:probe", b"1")
    assert client.get("core:probe") == b"1"


def test_a_burst_past_the_async_pool_waits_for_connections_instead_of_failing(redis_url):
    burst = 3 * shared_redis.ASYNC_MAX_CONNECTIONS

    async def scenario() -> tuple[list[int], int]:
        client = shared_redis.async_client()
        # Each command takes a connection of its own while the others are still running.
        answers = await asyncio.gather(*(client.incr("core:burst") for _ in range(burst)))
        opened = len(client.connection_pool._available_connections) + len(client.connection_pool._in_use_connections)
        await client.aclose()
        return answers, opened

    answers, opened = asyncio.run(scenario())
    assert sorted(answers) == list(range(1, burst + 1))
    assert opened <= shared_redis.ASYNC_MAX_CONNECTIONS
