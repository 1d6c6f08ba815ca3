from __future__ import annotations

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"

    def ready(self) -> None:
        # Importing these connects the Celery worker signals that start the online serving
        # loop and the cache invalidation of the prediction gateway; the registry asks us
        # to validate uploaded versions through its hook.
        # The conversion task and run kind register on import too; the version comparison
        # shows what conversions measured (latency of parent and child).
        from inference import invalidation, serving, validation  # noqa: F401
        from inference.conversions import services as conversions
        from registry import hooks

        hooks.validation_requester_register(validation.validation_request)
        hooks.version_metrics_register(conversions.version_metrics)
