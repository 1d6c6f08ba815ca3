from __future__ import annotations

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"

    def ready(self) -> None:
        # Connects the Celery worker signals that start the online serving loop, and the
        # cache invalidation of the prediction gateway.
        from inference import invalidation, serving  # noqa: F401
