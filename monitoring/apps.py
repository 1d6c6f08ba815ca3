from __future__ import annotations

from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        # Chooses Prometheus's multiprocess directory before any metric is created, and
        # connects the worker signals that retire a dead process's gauges.
        from monitoring import metrics, signals  # noqa: F401
