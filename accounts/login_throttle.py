"""Login throttling: failed sign-ins counted per username and per client address in Redis.

A small cache-based throttle rather than django-axes: axes adds its own tables and an
authentication backend that needs the request in every authenticate() call (test
clients, management commands), while the portal already has a Redis that every web
process shares. Counters expire on their own; a success clears the username's counter.
If Redis is unreachable the login still works (logged): locking everyone out of the
UI because the broker is down would be worse than an unthrottled minute.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse

from inference import wire

logger = logging.getLogger(__name__)
KEY_PREFIX = "maas:login:"
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(wire.redis_url(), socket_timeout=1, socket_connect_timeout=1)
    return _client


def _keys(request: HttpRequest) -> dict[str, int]:
    """Counter keys of this attempt with their limits: per username+address, and per address."""
    username = request.POST.get("username", "").strip().lower()[:150]
    address = request.META.get("REMOTE_ADDR", "")
    user_key = hashlib.sha256(f"{username}|{address}".encode()).hexdigest()[:32]
    return {
        f"{KEY_PREFIX}u:{user_key}": settings.LOGIN_FAILURE_LIMIT,
        f"{KEY_PREFIX}a:{address}": settings.LOGIN_FAILURE_LIMIT * 10,
    }


class ThrottledLoginView(LoginView):
    """Django's login view, answering 429 after too many failures."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        keys = _keys(request)
        try:
            client = _redis()
            counts = client.mget(list(keys))
        except redis.RedisError as exc:
            logger.warning("login throttle unavailable (%s): not throttling", exc)
            return super().post(request, *args, **kwargs)
        window = settings.LOGIN_FAILURE_WINDOW_SECONDS
        if any(int(count or 0) >= limit for count, limit in zip(counts, keys.values(), strict=True)):
            form = self.get_form()
            form.errors.clear()
            context = self.get_context_data(form=form, throttled=True, retry_minutes=max(1, window // 60))
            response = self.render_to_response(context, status=429)
            response["Retry-After"] = str(window)
            return response
        response = super().post(request, *args, **kwargs)
        try:
            if response.status_code == 200:  # the form came back with an error: a failure
                with client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.incr(key)
                        pipe.expire(key, window)
                    pipe.execute()
            elif response.status_code in (301, 302):
                client.delete(next(iter(keys)))
        except redis.RedisError as exc:
            logger.warning("login throttle unavailable (%s)", exc)
        return response
