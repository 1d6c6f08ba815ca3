from __future__ import annotations

from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        # Connects the worker signals that retire a dead process's gauges, and registers the
        # evaluation gate and the dataset files into the registry's hooks.
        from monitoring import metrics, signals  # noqa: F401
        from monitoring.services import gate
        from registry import hooks

        hooks.promotion_check_register(gate.gate_promotion_check)
        hooks.model_files_register(gate.gate_dataset_files)
