"""Evaluation datasets and runs.

Runs are tracked runs (inference.runs), like batch jobs: state in our own row, enqueued
after commit on the model's serving queue, `acks_late` so a dead worker's run is
redelivered, and failed with a reason after MAX_RUN_ATTEMPTS claims. What a run does on
the worker is in monitoring/tasks.py.
"""

from __future__ import annotations

import logging
import uuid
from typing import IO, Any

import numpy as np
from django.db import transaction
from django.db.models import QuerySet
from django.urls import reverse

from core import broker
from core.errors import Conflict, InvalidInput, NotFound
from inference.runs.arrays import npz_load, npz_save, paths_delete
from inference.runs.lifecycle import MAX_ATTEMPTS, run_lookup, stale_expire
from inference.runs.loop import PROGRESS_SECONDS as PROGRESS_SECONDS
from monitoring import datasets
from monitoring.models import RUN_ACTIVE, EvaluationDataset, EvaluationRun, RunStatus, TaskType
from monitoring.tasks import evaluation_enqueue
from monitoring.tasks import evaluation_execute as evaluation_execute
from registry import hooks, selectors
from registry.models import ModelVersion, RegisteredModel, VersionStatus

logger = logging.getLogger(__name__)

MAX_RUN_ATTEMPTS = MAX_ATTEMPTS


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
    labelled = datasets.dataset_read(
        file, filename, reference.signature, list(reference.labels or []), task=reference.task
    )
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
    """A run the user may see, else NotFound."""
    return run_lookup(runs_visible_to(user), run_id)


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
        _dataset_arrays(dataset),
        version.signature,
        list(version.labels or []),
        dataset.source_format,
        task=version.task,
    )
    # Refused (503) before the run exists while the broker cannot take it.
    broker.broker_check()
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


def evaluations_expire_stale() -> int:
    """Fail running evaluations no worker can still be running (Celery beat sweeps them)."""
    return stale_expire(EvaluationRun)


def latest_runs(model: RegisteredModel) -> dict[tuple[int, int], EvaluationRun]:
    """The newest succeeded run of each (version, dataset) of a model."""
    latest: dict[tuple[int, int], EvaluationRun] = {}
    runs = EvaluationRun.objects.filter(version__model=model, status=RunStatus.SUCCEEDED).select_related(
        "version", "dataset"
    )
    for run in runs.order_by("-finished_at"):
        latest.setdefault((run.version_id, run.dataset_id), run)
    return latest


# The figures the version comparison shows per dataset, by the dataset's task.
COMPARED_METRICS: dict[str, list[str]] = {
    TaskType.CLASSIFICATION: ["accuracy", "top_k_accuracy", "macro_f1", "log_loss"],
    TaskType.REGRESSION: ["mae", "rmse", "r2"],
}


def version_metrics(versions: list[ModelVersion]) -> hooks.VersionMetrics:
    """The registry's version comparison: each version's latest succeeded run per dataset (as the
    compare page picks them), its task's figures and batch latency, each linked to its run."""
    if not versions:
        return {}
    wanted = {version.pk for version in versions}
    figures: hooks.VersionMetrics = {}
    for (version_id, _), run in latest_runs(versions[0].model).items():
        if version_id not in wanted:
            continue
        link = reverse("monitoring:run-detail", args=[run.pk])
        metrics = run.metrics or {}
        named = {name: metrics.get(name) for name in COMPARED_METRICS.get(run.dataset.task, [])}
        named["p95 batch ms"] = (metrics.get("latency_ms") or {}).get("p95")
        rows = figures.setdefault(version_id, {})
        for name, value in named.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows[f"{run.dataset.name} · {name}"] = (f"{value:.4g}", link)
    return figures


def derived_evaluate(child: ModelVersion, actor: Any) -> list[EvaluationRun]:
    """Evaluate a converted version on each of its model's datasets, and its parent where the parent
    has no evaluation there yet, so the two can be shown side by side (the registry's derived hook)."""
    started = []
    parent = child.parent
    latest = latest_runs(child.model)
    for dataset in child.model.eval_datasets.all():
        pending = [child]
        if parent is not None and parent.status == VersionStatus.READY and (parent.pk, dataset.pk) not in latest:
            busy = EvaluationRun.objects.filter(version=parent, dataset=dataset, status__in=RUN_ACTIVE).exists()
            pending += [] if busy else [parent]
        for version in pending:
            try:
                started.append(evaluation_start(actor=actor, version=version, dataset=dataset))
            except (InvalidInput, Conflict) as exc:  # the dataset does not fit this version: say so, go on
                logger.warning("no evaluation of %s on %s: %s", version, dataset, exc)
    return started
