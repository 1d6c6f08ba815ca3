from __future__ import annotations

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"

    def ready(self) -> None:
        # Importing these connects the Celery worker signals that start the online serving
        # loop and the cache invalidation of the prediction gateway; the registry asks us
        # to validate uploaded versions through its hook.
        from inference import invalidation, serving, validation  # noqa: F401
        from inference.conversions import work  # noqa: F401  (the conversion task and run kind)
        from registry import hooks

        hooks.validation_requester_register(validation.validation_request)
