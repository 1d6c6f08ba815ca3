"""Celery entry points of monitoring: evaluation runs (on the model's serving queue, like batch
jobs) and metric retention (Celery beat), and what an evaluation does with its rows.

An evaluation is a tracked run (inference.runs) that is not resumable: a redelivered run
starts again from its first row, and the scores are computed from all rows at the end.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from celery import shared_task

from inference.runs.lifecycle import Claim, run_enqueue, run_kind_register
from inference.runs.loop import ModelWork, Outputs, work_run
from monitoring import metrics, scoring
from monitoring.models import EvaluationRun, RunStatus, TaskType

logger = logging.getLogger(__name__)


@shared_task(name="monitoring.tasks.evaluation_run", acks_late=True, reject_on_worker_lost=True)
def evaluation_run(run_id: str) -> str:
    """Evaluate a version on a dataset on this worker; redelivered if the worker dies."""
    return evaluation_execute(run_id)


@shared_task(name="monitoring.tasks.metrics_prune")
def metrics_prune() -> int:
    """Delete serving aggregates older than METRICS_RETENTION_DAYS, usage older than USAGE_RETENTION_DAYS (beat)."""
    deleted = metrics.buckets_prune()
    used = metrics.usage_prune()
    logger.info("pruned %s metric buckets and %s usage buckets", deleted, used)
    return deleted + used


def evaluation_enqueue(run_id: Any) -> None:
    """Send a queued run to its model's serving queue; if the broker refuses, fail it saying so."""
    run = EvaluationRun.objects.select_related("version__model").filter(pk=run_id, status=RunStatus.QUEUED).first()
    if run is not None:
        run_enqueue(run, evaluation_run, run.version.model.serving_queue)


run_kind_register(EvaluationRun, evaluation_enqueue)


class EvaluationWork(ModelWork[EvaluationRun]):
    """An evaluation's chunks are forwards of its version over the dataset; it keeps the first
    output and the batch timings, and stores the scores."""

    finish_failed = "The metrics could not be computed"

    def __init__(self, claim: Claim[EvaluationRun]) -> None:
        super().__init__(claim)
        self.batch_ms: list[float] = []
        self.batch_rows: list[int] = []

    def model_source(self) -> tuple[Any, str, int]:
        return self.run.version_id, self.run.dataset.path, self.run.batch_size

    def inputs(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.target = arrays.pop(self.run.dataset.target_key)
        return arrays

    def chunk(self, start: int, stop: int) -> Outputs:
        outputs = super().chunk(start, stop)
        name = next(iter(outputs))
        return {name: outputs[name]}

    def chunk_done(self, rows: int, began: float, ok: bool) -> None:
        if ok:
            self.batch_ms.append((time.perf_counter() - began) * 1000)
            self.batch_rows.append(rows)

    def finish(self, outputs: Outputs) -> dict[str, Any]:
        predictions = next(iter(outputs.values()))
        if self.run.dataset.task == TaskType.CLASSIFICATION:
            if predictions.ndim != 2:
                raise ValueError(f"a classifier's first output must be [N, classes]; it is {list(predictions.shape)}")
            scores = scoring.classification_scores(predictions, self.target)
        else:
            scores = scoring.regression_scores(predictions, self.target)
        result = {
            "task": self.run.dataset.task,
            "rows": self.run.total_rows,
            **scores,
            **scoring.latency_scores(self.batch_ms, self.batch_rows),
        }
        return {"metrics": result}


def evaluation_execute(run_id: str) -> str:
    """Run an evaluation on this worker in batches; returns the status it ends in."""
    return work_run(EvaluationRun, run_id, EvaluationWork)
