"""Celery entry point of evaluation runs (on the model's serving queue, like batch jobs)."""

from __future__ import annotations

from celery import shared_task

from monitoring import services


@shared_task(name="monitoring.tasks.evaluation_run", acks_late=True, reject_on_worker_lost=True)
def evaluation_run(run_id: str) -> str:
    """Evaluate a version on a dataset on this worker; redelivered if the worker dies."""
    return services.evaluation_execute(run_id)
