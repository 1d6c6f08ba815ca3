"""Per-token request rates, counted in Redis so that every web process shares the count.

A fixed one-minute window per token: one Lua call increments the counter, sets its expiry
on the first hit and answers the count with the time left, in one round trip.
"""

from __future__ import annotations

import math
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from core.errors import ServiceUnavailable, TooManyRequests

WINDOW_SECONDS = 60
KEY_PREFIX = "maas:rate:"
_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""
_sync_scripts: dict[int, Any] = {}
_async_scripts: dict[int, Any] = {}


def _key(bucket: str) -> str:
    return f"{KEY_PREFIX}{bucket}:{int(time.time() // WINDOW_SECONDS)}"


def _verdict(bucket: str, limit: int, reply: list[int]) -> None:
    count, ttl_ms = int(reply[0]), int(reply[1])
    if count > limit:
        retry_after = max(1, math.ceil(ttl_ms / 1000)) if ttl_ms > 0 else WINDOW_SECONDS
        raise TooManyRequests(
            f"Rate limit of {limit} requests per minute exceeded for {bucket}; retry in {retry_after}s.",
            retry_after=retry_after,
        )


def rate_hit(client: redis.Redis, bucket: str, limit: int) -> None:
    """Count one request of `bucket`; raise TooManyRequests (429) past `limit` a minute."""
    script = _sync_scripts.get(id(client))
    if script is None:
        script = _sync_scripts[id(client)] = client.register_script(_SCRIPT)
    try:
        reply = script(keys=[_key(bucket)], args=[WINDOW_SECONDS * 1000])
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"The rate limiter (Redis) is unavailable: {exc}") from None
    _verdict(bucket, limit, reply)


async def rate_hit_async(client: aioredis.Redis, bucket: str, limit: int) -> None:
    """rate_hit for the asyncio gateway."""
    script = _async_scripts.get(id(client))
    if script is None:
        script = _async_scripts[id(client)] = client.register_script(_SCRIPT)
    try:
        reply = await script(keys=[_key(bucket)], args=[WINDOW_SECONDS * 1000])
    except (redis.RedisError, OSError) as exc:
        raise ServiceUnavailable(f"The rate limiter (Redis) is unavailable: {exc}") from None
    _verdict(bucket, limit, reply)
