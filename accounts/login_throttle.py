"""Login throttling: failed sign-ins counted per username and per client address in Redis.

A small cache-based throttle rather than django-axes: axes adds its own tables and an
authentication backend that needs the request in every authenticate() call (test
clients, management commands), while the portal already has a Redis that every web
process shares. The counting is core.throttle's, the same as the per-token rate limits;
a window opens with the first failure, and a success clears the username's count.
If Redis is unreachable the login still works (logged): locking everyone out of the
UI because the broker is down would be worse than an unthrottled minute.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse

from core import redis as shared_redis
from core.throttle import Clock, Throttle, ThrottleUnavailable

logger = logging.getLogger(__name__)
# Not the "maas:login:" of the counters before core.throttle: those were strings, these hashes.
KEY_PREFIX = "maas:signin:"


def _buckets(request: HttpRequest) -> dict[str, int]:
    """Counters of this attempt with their limits: per username+address, and per address."""
    username = request.POST.get("username", "").strip().lower()[:150]
    address = request.META.get("REMOTE_ADDR", "")
    user_key = hashlib.sha256(f"{username}|{address}".encode()).hexdigest()[:32]
    return {f"u:{user_key}": settings.LOGIN_FAILURE_LIMIT, f"a:{address}": settings.LOGIN_FAILURE_LIMIT * 10}


class ThrottledLoginView(LoginView):
    """Django's login view, answering 429 after too many failures."""

    # Injectable (as_view(clock=...) or a test's monkeypatch) so windows can be walked through.
    clock: Clock = staticmethod(time.time)

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        buckets = _buckets(request)
        throttle = Throttle(KEY_PREFIX, settings.LOGIN_FAILURE_WINDOW_SECONDS, clock=self.clock)
        try:
            # A short read timeout: a Redis that hangs must not hold up sign-ins for long.
            client = shared_redis.client(timeout=1)
            counts = throttle.peek(client, *buckets)
        except (ThrottleUnavailable, redis.RedisError) as exc:
            logger.warning("login throttle unavailable (%s): not throttling", exc)
            return super().post(request, *args, **kwargs)
        blocked = [c.retry_after for c, limit in zip(counts, buckets.values(), strict=True) if c.count >= limit]
        if blocked:
            retry_after = max(blocked)
            form = self.get_form()
            form.errors.clear()
            context = self.get_context_data(form=form, throttled=True, retry_minutes=math.ceil(retry_after / 60))
            response = self.render_to_response(context, status=429)
            response["Retry-After"] = str(retry_after)
            return response
        response = super().post(request, *args, **kwargs)
        try:
            if response.status_code == 200:  # the form came back with an error: a failure
                throttle.hit(client, *buckets)
            elif response.status_code in (301, 302):
                throttle.clear(client, next(iter(buckets)))
        except ThrottleUnavailable as exc:
            logger.warning("login throttle unavailable (%s)", exc)
        return response
