from __future__ import annotations

from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        # Connects the worker signals that retire a dead process's gauges; registers the metrics
        # recorder as the serving plane's telemetry sink, and the evaluation gate, the dataset
        # files and the version comparison's metrics into the registry's hooks.
        from inference import telemetry
        from monitoring import signals  # noqa: F401
        from monitoring.services import evaluation, gate
        from monitoring.telemetry import sink
        from registry import hooks

        telemetry.sink_register(sink)
        hooks.promotion_check_register(gate.gate_promotion_check)
        hooks.model_files_register(gate.gate_dataset_files)
        hooks.version_metrics_register(evaluation.version_metrics)
        hooks.version_derived_register(evaluation.derived_evaluate)
