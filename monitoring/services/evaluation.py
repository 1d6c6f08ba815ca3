"""Evaluation datasets and runs.

Runs follow the batch-job pattern (inference/jobs.py, inference/tasks.py): state in our own
row, enqueued after commit on the model's serving queue, `acks_late` so a dead worker's
run is redelivered, and failed with a reason after MAX_RUN_ATTEMPTS claims.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from typing import IO, Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from core.errors import Conflict, InvalidInput, NotFound
from inference.jobs import batched_layout, npz_load, npz_save, paths_delete
from inference.services import exception_summary
from monitoring import datasets, scoring
from monitoring.models import (
    RUN_ACTIVE,
    EvaluationDataset,
    EvaluationRun,
    RunStatus,
    TaskType,
)
from registry import selectors
from registry.models import ModelVersion, RegisteredModel, VersionStatus

logger = logging.getLogger(__name__)

MAX_RUN_ATTEMPTS = 3
PROGRESS_SECONDS = 0.5


# --- evaluation datasets --------------------------------------------------------------------


def _reference_version(model: RegisteredModel, number: int | None) -> ModelVersion:
    """The version a dataset is checked against: the one named, else production, else the newest ready one."""
    if number is not None:
        version = model.versions.filter(version=number).first()
        if version is None:
            raise NotFound(f"Version {number} of model {model.name!r} not found.", field="version")
        return version
    holder = model.aliases.select_related("version").filter(name="production").first()
    version = (
        holder.version if holder else model.versions.filter(status=VersionStatus.READY).order_by("-version").first()
    )
    if version is None:
        raise Conflict(f"Model {model.name!r} has no ready version to check a dataset against.", field="version")
    return version


def dataset_create(
    *, actor: Any, model: RegisteredModel, name: str, file: IO[bytes], filename: str = "", description: str = "",
    version: int | None = None,
) -> EvaluationDataset:  # fmt: skip
    """Check labelled data against a version's signature and store it (normalised to .npz)."""
    name = (name or "").strip()
    if not name or len(name) > 64:
        raise InvalidInput("A dataset needs a name of 1-64 characters.", field="name")
    if model.eval_datasets.filter(name=name).exists():
        raise Conflict(f"Model {model.name!r} already has a dataset named {name!r}.", field="name")
    reference = _reference_version(model, version)
    labelled = datasets.dataset_read(file, filename, reference.signature, list(reference.labels or []))
    prefix = f"evaluation/{model.pk}/{uuid.uuid4().hex}"
    path = npz_save(f"{prefix}/data.npz", labelled.arrays())
    try:
        with transaction.atomic():
            dataset = EvaluationDataset.objects.create(
                model=model, name=name, description=description, task=labelled.task,
                source_format=labelled.source_format, filename=filename[:255], path=path, rows=labelled.rows,
                size_bytes=getattr(file, "size", 0) or 0, num_classes=labelled.num_classes, created_by=actor,
            )  # fmt: skip
    except BaseException:
        paths_delete([path])
        raise
    logger.info("dataset %s: %s rows (%s) by %s", dataset, dataset.rows, dataset.task, actor)
    return dataset


def dataset_delete(*, actor: Any, dataset: EvaluationDataset) -> None:
    """Delete a dataset and its runs (refused while a gate uses it)."""
    if dataset.gates.exists():
        raise Conflict(f"Dataset {dataset.name!r} is used by the promotion gate; change the gate first.")
    path = dataset.path
    with transaction.atomic():
        dataset.delete()
        transaction.on_commit(lambda: paths_delete([path]))


def dataset_get(model: RegisteredModel, name_or_id: Any) -> EvaluationDataset:
    found = model.eval_datasets.filter(name=str(name_or_id)).first()
    if found is None and str(name_or_id).isdigit():
        found = model.eval_datasets.filter(pk=int(name_or_id)).first()
    if found is None:
        raise NotFound(f"Model {model.name!r} has no dataset {name_or_id!r}.", field="dataset")
    return found


# --- evaluation runs --------------------------------------------------------------------------


def runs_visible_to(user: Any) -> QuerySet[EvaluationRun]:
    """Runs of models the user may see."""
    return EvaluationRun.objects.select_related("version__model", "dataset", "created_by").filter(
        version__model__in=selectors.models_visible_to(user)
    )


def run_get(user: Any, run_id: Any) -> EvaluationRun:
    try:
        key = uuid.UUID(str(run_id))
    except ValueError:
        raise NotFound(f"Evaluation run {run_id!r} not found.") from None
    run = runs_visible_to(user).filter(pk=key).first()
    if run is None:
        raise NotFound(f"Evaluation run {run_id} not found.")
    return run


def evaluation_start(
    *, actor: Any, version: ModelVersion, dataset: EvaluationDataset, batch_size: int | None = None
) -> EvaluationRun:
    """Queue an evaluation of a ready version on one of its model's datasets."""
    if dataset.model_id != version.model_id:
        raise InvalidInput(f"Dataset {dataset.name!r} belongs to another model.", field="dataset")
    if version.status != VersionStatus.READY:
        raise Conflict(f"Version {version.version} of {version.model.name!r} is {version.status}; "
                       "only ready versions can be evaluated.", field="version")  # fmt: skip
    if batch_size is not None and not 1 <= batch_size <= 65_536:
        raise InvalidInput("batch_size must be between 1 and 65536.", field="batch_size")
    # The dataset was checked against one version; this one may have another signature.
    datasets.labelled_check(
        _dataset_arrays(dataset), version.signature, list(version.labels or []), dataset.source_format
    )
    with transaction.atomic():
        run = EvaluationRun.objects.create(
            version=version, dataset=dataset, batch_size=batch_size or version.max_batch_size,
            total_rows=dataset.rows, created_by=actor if getattr(actor, "pk", None) else None,
        )  # fmt: skip
        transaction.on_commit(lambda: evaluation_enqueue(run.pk))
    logger.info("queued %s", run)
    return run


def _dataset_arrays(dataset: EvaluationDataset) -> dict[str, np.ndarray]:
    return npz_load(dataset.path)


def evaluation_enqueue(run_id: Any) -> None:
    """Send a queued run to its model's serving queue; if the broker refuses, fail it saying so."""
    from monitoring.tasks import evaluation_run

    run = EvaluationRun.objects.select_related("version__model").filter(pk=run_id, status=RunStatus.QUEUED).first()
    if run is None:
        return
    try:
        evaluation_run.apply_async(args=[str(run.pk)], queue=run.version.model.serving_queue)
    except Exception as exc:  # kombu raises OperationalError and friends
        logger.exception("could not enqueue %s", run)
        EvaluationRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
            status=RunStatus.FAILED, finished_at=timezone.now(),
            error=f"The evaluation could not be queued (broker unavailable: {exc}). Start it again.",
        )  # fmt: skip


def evaluations_expire_stale() -> int:
    """Fail running evaluations no worker can still be running (their message was lost)."""
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    cutoff = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + timeout + 60)
    stale = EvaluationRun.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff)
    if not stale.exists():
        return 0
    return stale.update(status=RunStatus.FAILED, finished_at=timezone.now(),
                        error="The worker running this evaluation stopped reporting and it was not redelivered; "
                              "start it again.")  # fmt: skip


def _claim(run_id: str) -> tuple[EvaluationRun, int] | str:
    now = timezone.now()
    with transaction.atomic():
        run = EvaluationRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status not in RUN_ACTIVE:
            return run.status if run else "missing"
        if run.attempts >= MAX_RUN_ATTEMPTS:
            run.status, run.finished_at = RunStatus.FAILED, now
            run.error = (f"The evaluation was interrupted {MAX_RUN_ATTEMPTS} times (the worker process died while "
                         "running it); it was not retried again.")  # fmt: skip
            run.save(update_fields=["status", "error", "finished_at"])
            return RunStatus.FAILED
        run.attempts += 1
        run.status, run.heartbeat_at, run.rows_done = RunStatus.RUNNING, now, 0
        run.started_at = run.started_at or now
        run.save(update_fields=["attempts", "status", "heartbeat_at", "rows_done", "started_at"])
    return run, run.attempts


def _owned(run: EvaluationRun, attempt: int) -> QuerySet[EvaluationRun]:
    return EvaluationRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, attempts=attempt)


def _fail(run: EvaluationRun, attempt: int, error: str) -> str:
    now = timezone.now()
    _owned(run, attempt).update(status=RunStatus.FAILED, error=error[:2000], finished_at=now, heartbeat_at=now)
    logger.info("%s failed: %s", run, error)
    return RunStatus.FAILED


def evaluation_execute(run_id: str) -> str:
    """Run an evaluation on this worker in batches; returns the status it ends in."""
    from celery.exceptions import SoftTimeLimitExceeded

    from inference.cache import model_cache
    from inference.tasks import _forward

    claimed = _claim(run_id)
    if isinstance(claimed, str):
        return claimed
    run, attempt = claimed
    try:
        loaded = model_cache().get(run.version_id)
        arrays = _dataset_arrays(run.dataset)
    except Exception as exc:  # ModelUnavailable, storage errors: say why
        return _fail(run, attempt, f"The evaluation could not start: {exception_summary(exc)}")
    target = arrays.pop(run.dataset.target_key)
    batched = batched_layout(loaded.signature)
    step = run.batch_size if batched and loaded.batching else 1
    first_outputs: list[np.ndarray] = []
    batch_ms: list[float] = []
    batch_rows: list[int] = []
    start, last_progress = 0, time.monotonic()
    try:
        while start < run.total_rows:
            stop = min(start + step, run.total_rows)
            began = time.perf_counter()
            try:
                outputs = _forward(loaded, arrays, start, stop, batched)
            except SoftTimeLimitExceeded:
                raise
            except Exception as exc:
                return _fail(run, attempt, f"Rows {start + 1} to {stop}: the model failed: {exception_summary(exc)}")
            batch_ms.append((time.perf_counter() - began) * 1000)
            batch_rows.append(stop - start)
            first_outputs.append(outputs[0][1])
            start = stop
            if time.monotonic() - last_progress >= PROGRESS_SECONDS:
                if not _owned(run, attempt).update(rows_done=start, heartbeat_at=timezone.now()):
                    return EvaluationRun.objects.filter(pk=run.pk).values_list("status", flat=True).first() or ""
                last_progress = time.monotonic()
        predictions = np.concatenate(first_outputs)
        if run.dataset.task == TaskType.CLASSIFICATION:
            if predictions.ndim != 2:
                raise ValueError(f"a classifier's first output must be [N, classes]; it is {list(predictions.shape)}")
            scores = scoring.classification_scores(predictions, target)
        else:
            scores = scoring.regression_scores(predictions, target)
    except SoftTimeLimitExceeded:
        return _fail(run, attempt, f"The evaluation ran past the task time limit after row {start}.")
    except Exception as exc:
        return _fail(run, attempt, f"The metrics could not be computed: {exception_summary(exc)}")
    result = {
        "task": run.dataset.task,
        "rows": run.total_rows,
        **scores,
        **scoring.latency_scores(batch_ms, batch_rows),
    }
    finished = timezone.now()
    _owned(run, attempt).update(status=RunStatus.SUCCEEDED, metrics=result, rows_done=run.total_rows,
                                finished_at=finished, heartbeat_at=finished)  # fmt: skip
    logger.info("%s succeeded", run)
    return RunStatus.SUCCEEDED


def latest_runs(model: RegisteredModel) -> dict[tuple[int, int], EvaluationRun]:
    """The newest succeeded run of each (version, dataset) of a model."""
    latest: dict[tuple[int, int], EvaluationRun] = {}
    runs = EvaluationRun.objects.filter(version__model=model, status=RunStatus.SUCCEEDED).select_related(
        "version", "dataset"
    )
    for run in runs.order_by("-finished_at"):
        latest.setdefault((run.version_id, run.dataset_id), run)
    return latest
