"""A fast throttle on repeated bad bearer tokens from one client address, on every plane.

An address that sent BAD_TOKEN_LIMIT invalid, expired or revoked tokens within a window of
BAD_TOKEN_WINDOW_SECONDS (opened by its first failure) is answered 429, with the window's
time left as Retry-After, before any further token of its is looked up. The count lives in
Redis (core.throttle), so the /v2 gateway, /v1 and the REST API share it whatever process
answers. It is per address: a valid token from another client is not slowed at all, and the
gateway never asks for a token it has cached (only lookups are guarded).

The address is the one the server saw: behind a proxy, run uvicorn with --proxy-headers and
--forwarded-allow-ips naming the proxy, or every client shares the proxy's address.
Without Redis nothing is throttled (logged): refusing every token because the counter is
away would be worse than an unthrottled minute, as for sign-ins.
"""

from __future__ import annotations

import logging

import redis
import redis.asyncio as aioredis
from django.conf import settings

from core.errors import TooManyRequests
from core.throttle import Count, Throttle, ThrottleUnavailable

logger = logging.getLogger(__name__)

KEY_PREFIX = "maas:badtoken:"


def _throttle() -> Throttle:
    return Throttle(KEY_PREFIX, settings.BAD_TOKEN_WINDOW_SECONDS)


def _refuse(address: str, counted: Count) -> None:
    if counted.count >= settings.BAD_TOKEN_LIMIT:
        raise TooManyRequests(
            f"Too many invalid API tokens from {address} ({counted.count} in {settings.BAD_TOKEN_WINDOW_SECONDS}s); "
            f"retry in {counted.retry_after}s.",
            retry_after=counted.retry_after,
        )


def admit(client: redis.Redis, address: str) -> None:
    """429 when `address` sent too many bad tokens this window; before a token is looked up."""
    try:
        counted = _throttle().peek(client, address)[0]
    except (ThrottleUnavailable, redis.RedisError) as exc:
        logger.warning("bad-token throttle unavailable (%s): not throttling", exc)
        return
    _refuse(address, counted)


def failed(client: redis.Redis, address: str) -> None:
    """Count a bad token from `address`."""
    try:
        _throttle().hit(client, address)
    except (ThrottleUnavailable, redis.RedisError) as exc:
        logger.warning("bad-token throttle unavailable (%s): failure not counted", exc)


async def admit_async(client: aioredis.Redis, address: str) -> None:
    """admit() for the asyncio gateway."""
    try:
        counted = (await _throttle().peek_async(client, address))[0]
    except (ThrottleUnavailable, redis.RedisError) as exc:
        logger.warning("bad-token throttle unavailable (%s): not throttling", exc)
        return
    _refuse(address, counted)


async def failed_async(client: aioredis.Redis, address: str) -> None:
    """failed() for the asyncio gateway."""
    try:
        await _throttle().hit_async(client, address)
    except (ThrottleUnavailable, redis.RedisError) as exc:
        logger.warning("bad-token throttle unavailable (%s): failure not counted", exc)
