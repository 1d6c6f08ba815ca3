"""Is the Celery broker taking messages? Asked before accepting work that must be queued.

A submission (an upload to validate, a batch job, an evaluation) that is accepted while the
broker is down would be answered 201 and then never run; refusing it at once with a 503 lets
the client retry. Publishing itself may still fail in the short window after a check: such a
run stays queued and the sweep on Celery beat sends it again (inference.runs.lifecycle).
"""

from __future__ import annotations

import logging
import time

from celery import current_app
from django.conf import settings

from core.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

# A successful check is trusted this long: a burst of submissions costs one connection.
OK_REUSE_SECONDS = 1.0
_ok_at = 0.0


class BrokerUnavailable(ServiceUnavailable):
    """The broker did not accept a connection: nothing was stored, the client may retry."""

    headers = {"Retry-After": "5"}


def broker_check() -> None:
    """Raise BrokerUnavailable (503) unless the broker accepts a connection within
    BROKER_CHECK_TIMEOUT_SECONDS (nothing to check when tasks run eagerly, in-process)."""
    global _ok_at
    if current_app.conf.task_always_eager or time.monotonic() - _ok_at < OK_REUSE_SECONDS:
        return
    timeout = settings.BROKER_CHECK_TIMEOUT_SECONDS
    try:
        with current_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:  # kombu raises OperationalError, OSError, redis errors, ...
        logger.warning("the broker is unavailable: %s", exc)
        raise BrokerUnavailable(
            "The task queue (broker) is unavailable, so nothing was accepted; try again shortly."
        ) from None
    _ok_at = time.monotonic()
