"""Telling every prediction gateway to forget cached tokens, users, models and aliases.

Each gateway process caches what it needs to authorise and route a prediction without a
database query. A change to any of those rows is published on a Redis channel once its
transaction commits, and every gateway drops its caches on the message; a change that
must take effect before the caller goes on (a revoked token, a deactivated user) waits
until every subscribed gateway has confirmed it.
"""

from __future__ import annotations

import logging
import time
import uuid

import redis
from django.conf import settings
from django.db import transaction

from core import redis as shared_redis

INVALIDATE_CHANNEL = "maas:invalidate"

logger = logging.getLogger(__name__)

_warned = False


def _redis() -> redis.Redis:
    # The socket timeout is above the one-second polls of serving_invalidate_confirmed.
    return shared_redis.client(timeout=2)


def serving_invalidate(reason: str) -> None:
    """Publish an invalidation once the current transaction commits (best effort)."""
    if not settings.INFERENCE_REDIS_URL:
        return

    def publish() -> None:
        try:
            _redis().publish(INVALIDATE_CHANNEL, reason)
        except redis.RedisError as exc:
            # Gateways also expire their caches on a short timer; a missed message costs
            # at most that much staleness. Say so once, not on every save.
            global _warned
            logger.log(
                logging.DEBUG if _warned else logging.WARNING,
                "could not publish cache invalidation (%s): %s",
                reason,
                exc,
            )
            _warned = True

    transaction.on_commit(publish)


ACK_MARKER = "|ack="
ACK_PREFIX = "maas:ack:"
CONFIRM_TIMEOUT_SECONDS = 5.0


def serving_invalidate_confirmed(reason: str, timeout: float = CONFIRM_TIMEOUT_SECONDS) -> tuple[int, int]:
    """Publish an invalidation now and wait until every subscribed gateway confirms it.

    PUBLISH answers how many processes received the message; each gateway drops its
    caches and then pushes to a reply list that this call waits on. A gateway that is not
    subscribed at that moment does not trust its caches (see the gateway's guard), so once this
    returns no process answers from a stale copy. Returns (receivers, confirmations).
    """
    if not settings.INFERENCE_REDIS_URL:
        return 0, 0
    key = f"{ACK_PREFIX}{uuid.uuid4().hex}"
    try:
        client = _redis()
        receivers = int(client.publish(INVALIDATE_CHANNEL, f"{reason}{ACK_MARKER}{key}"))
        confirmed = 0
        deadline = time.monotonic() + timeout
        while confirmed < receivers and (left := deadline - time.monotonic()) > 0:
            # Below the client's socket timeout, so a slow gateway is a timeout, not an error.
            if client.blpop([key], timeout=max(0.05, min(left, 1.0))) is not None:
                confirmed += 1
        client.delete(key)
    except redis.RedisError as exc:
        # Gateways cannot be subscribed either while Redis is away from them; they
        # distrust their caches until they are again.
        logger.warning("could not confirm invalidation %s: %s", reason, exc)
        return 0, 0
    if confirmed < receivers:
        logger.error(
            "invalidation %s: only %d of %d gateway processes confirmed within %gs; "
            "the others drop their caches within their TTL",
            reason,
            confirmed,
            receivers,
            timeout,
        )
    return receivers, confirmed


def serving_invalidate_confirmed_on_commit(reason: str) -> None:
    """Once the current transaction commits, publish and wait for every gateway's confirmation."""
    transaction.on_commit(lambda: serving_invalidate_confirmed(reason))
