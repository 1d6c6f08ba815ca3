"""Monitoring's sink for the serving plane's telemetry (registered in MonitoringConfig.ready)."""

from __future__ import annotations

from typing import Any

from monitoring.metrics import generation, generation_load, record, usage, worker_heartbeat
from monitoring.services.stats import version_stats, window_parse
from registry.models import RegisteredModel


class MonitoringSink:
    """Predictions, their usage and generation timing go to the recorder, worker reports to the
    gauges, stats come from the aggregates."""

    record = staticmethod(record)
    usage = staticmethod(usage)
    generation = staticmethod(generation)
    worker_heartbeat = staticmethod(worker_heartbeat)
    generation_load = staticmethod(generation_load)

    @staticmethod
    def stats(model: RegisteredModel, window: str | None, number: int | None) -> dict[str, Any]:
        return version_stats(model, window_parse(window), number=number)


sink = MonitoringSink()
