"""Events counted per key in windows kept in Redis, so that every process shares the count.

One primitive serves per-token rate limits (the /v2 gateway and the Django prediction
endpoint), per-token model-token budgets (`TOKENS`: an event costs the tokens a request
used) and sign-in throttling (accounts.login_throttle). A key's window opens with its
first event and lasts `window_seconds`; one Lua call counts the event on each key and
answers each count with the milliseconds its window has left (the Retry-After), in one
round trip. Windows open at the first event rather than on clock-aligned minutes, so a
burst is never split across an arbitrary boundary and tests need no luck.

Why not Django's Redis cache backend (CACHES): the gateway is asyncio and Django's async
cache methods run the sync client in a thread; its incr is a separate round trip from
setting the expiry (and fails on a missing key), and it cannot tell the time a window has
left without reaching into its private client.

Retry-After is the truth: a refused key is admitted again once its window closes, and the
hint is that window's time left (rounded up to whole seconds, never past the window). The
limiter before this one counted in clock-aligned minutes but answered its key's time to
live, which ran from the first request: a token told to wait 53 s was admitted 1.9 s later,
when the minute turned (tests/integration/test_request_hygiene.py watches a 3 s window).

The clock is injectable: the window arithmetic uses the caller's time, not Redis's, and
the stored key expires on Redis's clock only to clean up.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from django.conf import settings

from core.errors import ServiceUnavailable, TooManyRequests

Clock = Callable[[], float]

# KEYS: one hash per counted key, {s: window start (ms), n: count}. ARGV: now (ms), window
# (ms), cost (0 only reads). A window whose start is more than a window ahead of `now`
# came from a clock that has since jumped back: it is reopened rather than trusted.
_SCRIPT = """
local now, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for _, key in ipairs(KEYS) do
  local stored = redis.call('HMGET', key, 's', 'n')
  local start, count = tonumber(stored[1]), tonumber(stored[2]) or 0
  if not start or now >= start + window or start > now + window then
    start, count = now, 0
    if cost > 0 then
      redis.call('HSET', key, 's', now, 'n', 0)
      redis.call('PEXPIRE', key, window)
    end
  end
  if cost > 0 then count = redis.call('HINCRBY', key, 'n', cost) end
  out[#out + 1] = count
  out[#out + 1] = start + window - now
end
return out
"""
# Redis names a loaded script by this digest.
_SHA = hashlib.sha1(_SCRIPT.encode(), usedforsecurity=False).hexdigest()


class ThrottleUnavailable(ServiceUnavailable):
    """Redis did not answer: the caller decides whether that refuses (rate limits) or not (sign-in)."""


@dataclass(frozen=True, slots=True)
class Count:
    """Events counted in a key's current window, and whole seconds until it closes."""

    count: int
    retry_after: int


@dataclass(frozen=True, slots=True)
class Throttle:
    """Fixed windows of `window_seconds` per key under `prefix` (or of the setting `window_setting` names)."""

    prefix: str
    window_seconds: int
    clock: Clock = time.time
    window_setting: str = ""

    @property
    def window(self) -> int:
        """The window's length in seconds, read at each call when a setting names it."""
        return int(getattr(settings, self.window_setting)) if self.window_setting else self.window_seconds

    def _args(self, cost: int) -> tuple[int, int, int]:
        return int(self.clock() * 1000), self.window * 1000, cost

    def _counts(self, reply: list[int]) -> list[Count]:
        counts = []
        window = self.window
        for i in range(0, len(reply), 2):
            # A key whose window started on a clock slightly ahead of ours can say more
            # than a window: never promise more than one.
            seconds = min(window, max(1, math.ceil(int(reply[i + 1]) / 1000)))
            counts.append(Count(int(reply[i]), seconds))
        return counts

    def _keys(self, buckets: tuple[str, ...]) -> list[str]:
        return [f"{self.prefix}{bucket}" for bucket in buckets]

    def _call(self, client: redis.Redis, buckets: tuple[str, ...], cost: int) -> list[Count]:
        keys, args = self._keys(buckets), self._args(cost)
        try:
            try:
                reply = client.evalsha(_SHA, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                reply = client.eval(_SCRIPT, len(keys), *keys, *args)
        except (redis.RedisError, OSError) as exc:
            raise ThrottleUnavailable(f"The rate limiter (Redis) is unavailable: {exc}") from None
        return self._counts(reply)

    def hit(self, client: redis.Redis, *buckets: str) -> list[Count]:
        """Count one event on each bucket; their counts including it."""
        return self._call(client, buckets, 1)

    def peek(self, client: redis.Redis, *buckets: str) -> list[Count]:
        """The buckets' counts, counting nothing."""
        return self._call(client, buckets, 0)

    def clear(self, client: redis.Redis, bucket: str) -> None:
        """Forget a bucket's window (a success that forgives earlier failures)."""
        try:
            client.delete(f"{self.prefix}{bucket}")
        except (redis.RedisError, OSError) as exc:
            raise ThrottleUnavailable(f"The rate limiter (Redis) is unavailable: {exc}") from None

    def charge(self, client: redis.Redis, bucket: str, cost: int) -> Count:
        """Count `cost` events at once on a bucket (tokens a request used); its count including them."""
        return self._call(client, (bucket,), cost)[0]

    async def hit_async(self, client: aioredis.Redis, *buckets: str) -> list[Count]:
        """hit() for the asyncio gateway."""
        return await self._call_async(client, buckets, 1)

    async def peek_async(self, client: aioredis.Redis, *buckets: str) -> list[Count]:
        """peek() for the asyncio gateway."""
        return await self._call_async(client, buckets, 0)

    async def charge_async(self, client: aioredis.Redis, bucket: str, cost: int) -> Count:
        """charge() for the asyncio gateway."""
        return (await self._call_async(client, (bucket,), cost))[0]

    async def _call_async(self, client: aioredis.Redis, buckets: tuple[str, ...], cost: int) -> list[Count]:
        keys, args = self._keys(buckets), self._args(cost)
        try:
            try:
                reply = await client.evalsha(_SHA, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                reply = await client.eval(_SCRIPT, len(keys), *keys, *args)
        except (redis.RedisError, OSError) as exc:
            raise ThrottleUnavailable(f"The rate limiter (Redis) is unavailable: {exc}") from None
        return self._counts(reply)


# Per-token request rates: limits are set per minute on the token. The window is a minute
# unless RATE_LIMIT_WINDOW_SECONDS says otherwise (tests shorten it to watch one close).
RATE = Throttle("maas:rate:", 60, window_setting="RATE_LIMIT_WINDOW_SECONDS")


def _per(throttle: Throttle) -> str:
    window = throttle.window
    return "per minute" if window == 60 else f"per {window}s"


def _over(bucket: str, limit: int, counted: Count, throttle: Throttle) -> None:
    if counted.count > limit:
        raise TooManyRequests(
            f"Rate limit of {limit} requests {_per(throttle)} exceeded for {bucket}; retry in {counted.retry_after}s.",
            retry_after=counted.retry_after,
        )


def rate_hit(client: redis.Redis, bucket: str, limit: int, throttle: Throttle = RATE) -> None:
    """Count one request of `bucket`: TooManyRequests (429) past `limit` a minute, 503 without Redis."""
    _over(bucket, limit, throttle.hit(client, bucket)[0], throttle)


async def rate_hit_async(client: aioredis.Redis, bucket: str, limit: int, throttle: Throttle = RATE) -> None:
    """rate_hit for the asyncio gateway."""
    _over(bucket, limit, (await throttle.hit_async(client, bucket))[0], throttle)


# Per-token model tokens (prompt + completion): the limit is set per minute on the token.
# A fixed window, like RATE's: it opens with the first tokens charged and lasts a minute.
TOKENS = Throttle("maas:tokens:", 60, window_setting="RATE_LIMIT_WINDOW_SECONDS")


def _spent(bucket: str, limit: int, counted: Count, throttle: Throttle) -> None:
    # Charged after the answer, a window can overshoot by one request: refuse from `limit` on.
    if counted.count >= limit:
        raise TooManyRequests(
            f"Token limit of {limit} tokens {_per(throttle)} reached for {bucket} ({counted.count} used in this "
            f"window); retry in {counted.retry_after}s.",
            retry_after=counted.retry_after,
            limit="tokens",
        )


def tokens_check(client: redis.Redis, bucket: str, limit: int, throttle: Throttle = TOKENS) -> None:
    """Refuse (429, with the window's time left) a request of `bucket` once its tokens this window reach `limit`."""
    _spent(bucket, limit, throttle.peek(client, bucket)[0], throttle)


async def tokens_check_async(client: aioredis.Redis, bucket: str, limit: int, throttle: Throttle = TOKENS) -> None:
    """tokens_check for the asyncio gateway."""
    _spent(bucket, limit, (await throttle.peek_async(client, bucket))[0], throttle)
