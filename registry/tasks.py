"""Celery entry points of the registry."""

from __future__ import annotations

from celery import shared_task

from registry import services


@shared_task(name="registry.tasks.version_validate", acks_late=True, reject_on_worker_lost=True)
def version_validate(version_id: int) -> str:
    """Validate an uploaded version on an inference worker."""
    return services.version_validate(version_id)
