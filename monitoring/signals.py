"""Celery signals of the monitoring app: a worker process that exits retires its live gauges."""

from __future__ import annotations

import os
from typing import Any

from celery import signals

from monitoring import metrics


@signals.worker_process_shutdown.connect
def _process_gone(**kwargs: Any) -> None:
    metrics.recorder.flush_quietly()
    metrics.process_gone(os.getpid())
