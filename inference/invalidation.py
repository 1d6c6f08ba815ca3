"""Tells prediction gateways to forget cached tokens, models and aliases when they change.

Each gateway process caches what it needs to authorise and route a prediction without a
database query; a change to any of those rows is published on a Redis channel once its
transaction commits, and every gateway drops its caches on the message.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from inference import wire

logger = logging.getLogger(__name__)

_client: redis.Redis | None = None
_warned = False


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(wire.redis_url(), socket_timeout=2, socket_connect_timeout=1)
    return _client


def serving_invalidate(reason: str) -> None:
    """Publish an invalidation once the current transaction commits (best effort)."""
    if not settings.INFERENCE_REDIS_URL:
        return

    def publish() -> None:
        try:
            _redis().publish(wire.INVALIDATE_CHANNEL, reason)
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


def _on_change(sender: type, instance: Any, **kwargs: Any) -> None:
    serving_invalidate(f"{sender.__name__}:{instance.pk}")


def connect() -> None:
    from portal.models import ApiToken
    from registry.models import ModelAlias, ModelVersion, RegisteredModel

    for model in (ApiToken, RegisteredModel, ModelVersion, ModelAlias):
        post_save.connect(_on_change, sender=model, dispatch_uid=f"invalidate-{model.__name__}")
        post_delete.connect(_on_change, sender=model, dispatch_uid=f"invalidate-delete-{model.__name__}")


connect()
