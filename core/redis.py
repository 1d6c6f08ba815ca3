"""The one place that makes clients for the portal's shared Redis.

Online predictions, the serving heartbeats, rate limits and the sign-in throttle all use
the Redis named by INFERENCE_REDIS_URL. Clients are cached per process (sync) and per
event loop (asyncio: a connection belongs to the loop that opened it), keyed by URL and
read timeout, so a test that points the setting elsewhere gets a fresh client without
reaching into any module; `reset()` drops them all.
"""

from __future__ import annotations

import asyncio
import weakref

import redis
import redis.asyncio as aioredis
from django.conf import settings

# Commands that answer at once get this read timeout; BRPOP and pub/sub pass timeout=None.
DEFAULT_TIMEOUT = 5.0
CONNECT_TIMEOUT = 1.0
# A connection idle this long is checked with a PING before its next command.
HEALTH_CHECK_SECONDS = 30
# An event loop's client holds at most this many connections; a command past them waits (up to
# DEFAULT_TIMEOUT) for one to come back. redis-py's default pool raised "Too many connections"
# instead: under an overload, the requests whose cached token had just expired all asked the
# bad-token throttle at once, and more than 100 of them found no connection.
ASYNC_MAX_CONNECTIONS = 100

_Key = tuple[str, float | None]
# Set in a model host (inference.sandbox), which may not open sockets: its connections are
# made by its trusted parent and handed over, so clients use this class instead.
_connection_class: type[redis.Connection] | None = None
_sync: dict[_Key, redis.Redis] = {}
_async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_Key, aioredis.Redis]] = weakref.WeakKeyDictionary()


class RedisUnconfigured(redis.ConnectionError):
    """No Redis is configured: callers treat it like a Redis that is down."""


def redis_url() -> str:
    """The Redis that carries online predictions (the broker's, unless configured apart)."""
    url: str = settings.INFERENCE_REDIS_URL
    if not url:
        raise RedisUnconfigured("no Redis is configured (INFERENCE_REDIS_URL is empty)")
    # kombu spells unix sockets redis+socket://; redis-py spells them unix://.
    return "unix://" + url.removeprefix("redis+socket://") if url.startswith("redis+socket://") else url


def client(timeout: float | None = DEFAULT_TIMEOUT) -> redis.Redis:
    """This process's client; `timeout=None` for commands that block on the server (BRPOP)."""
    key = (redis_url(), timeout)
    found = _sync.get(key)
    if found is None:
        found = _sync[key] = redis.Redis.from_url(
            key[0], socket_timeout=timeout, socket_connect_timeout=CONNECT_TIMEOUT,
            health_check_interval=HEALTH_CHECK_SECONDS,
            **({"connection_class": _connection_class} if _connection_class is not None else {}),
        )  # fmt: skip
    return found


def connection_class_set(connection_class: type[redis.Connection] | None) -> None:
    """Make this process's sync clients connect through `connection_class` (a model host's handed sockets)."""
    global _connection_class
    _connection_class = connection_class
    reset()


def named_client(name: str, timeout: float = DEFAULT_TIMEOUT) -> redis.Redis:
    """A client of its own (not cached) whose connections carry `name` (CLIENT SETNAME): while
    the process lives its connection stays open, so others can tell it is alive from CLIENT LIST."""
    return redis.Redis.from_url(
        redis_url(), socket_timeout=timeout, socket_connect_timeout=CONNECT_TIMEOUT, client_name=name,
        health_check_interval=HEALTH_CHECK_SECONDS,
        **({"connection_class": _connection_class} if _connection_class is not None else {}),
    )  # fmt: skip


def async_client(timeout: float | None = DEFAULT_TIMEOUT) -> aioredis.Redis:
    """The running event loop's client; `timeout=None` for BRPOP and pub/sub listeners."""
    clients = _async.setdefault(asyncio.get_running_loop(), {})
    key = (redis_url(), timeout)
    found = clients.get(key)
    if found is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            key[0], max_connections=ASYNC_MAX_CONNECTIONS, timeout=DEFAULT_TIMEOUT, socket_timeout=timeout,
            socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=HEALTH_CHECK_SECONDS,
        )  # fmt: skip
        found = clients[key] = aioredis.Redis.from_pool(pool)
    return found


def reset() -> None:
    """Drop every cached client (tests that change INFERENCE_REDIS_URL or restart Redis)."""
    for cached in _sync.values():
        cached.close()
    _sync.clear()
    # Async clients can only be closed from their own loop; dropping them is enough.
    _async.clear()
