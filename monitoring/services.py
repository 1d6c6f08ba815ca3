"""Monitoring operations: serving statistics, evaluation datasets and runs, the promotion gate.

Reads of the serving aggregates sum the per-process MetricBucket rows. Evaluation runs
follow the batch-job pattern (inference/jobs.py, inference/tasks.py): state in our own
row, enqueued after commit on the model's serving queue, `acks_late` so a dead worker's
run is redelivered, and failed with a reason after MAX_RUN_ATTEMPTS claims.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from core.errors import Conflict, InvalidInput, NotFound
from inference.jobs import batched_layout, npz_load, npz_save, paths_delete
from inference.services import exception_summary
from monitoring import datasets, metrics, scoring
from monitoring.models import (
    LOWER_IS_BETTER,
    RUN_ACTIVE,
    EvaluationDataset,
    EvaluationRun,
    GateMetric,
    MetricBucket,
    PromotionGate,
    RunStatus,
    TaskType,
)
from registry import access, selectors
from registry.models import ModelVersion, RegisteredModel, VersionStatus

logger = logging.getLogger(__name__)

MAX_RUN_ATTEMPTS = 3
PROGRESS_SECONDS = 0.5
WINDOWS = {"hour": (timedelta(hours=1), 60), "day": (timedelta(days=1), 15 * 60), "week": (timedelta(days=7), 3600)}
QUANTILES = (0.5, 0.95, 0.99)


# --- serving statistics -------------------------------------------------------------------


def window_parse(raw: str | None) -> str:
    """`hour` (default), `day` or `week`; anything else is a 400 naming the choices."""
    window = raw or "hour"
    if window not in WINDOWS:
        raise InvalidInput(f"window must be one of {', '.join(WINDOWS)}; got {window!r}.", field="window")
    return window


def buckets_since(window: str, versions: QuerySet[ModelVersion] | None = None) -> QuerySet[MetricBucket]:
    span, _ = WINDOWS[window]
    rows = MetricBucket.objects.filter(minute__gte=timezone.now() - span)
    return rows.filter(version__in=versions) if versions is not None else rows


@dataclass
class Totals:
    """Summed aggregates of some MetricBucket rows."""

    count: int = 0
    errors: int = 0
    latency_ms: float = 0.0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    batch_rows: int = 0
    payload_bytes: int = 0
    hist: dict[str, int] = field(default_factory=dict)
    batch_hist: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, row: dict[str, Any]) -> None:
        self.count += row["count"]
        self.errors += row["errors"]
        self.latency_ms += row["latency_sum_ms"]
        self.queue_ms += row["queue_sum_ms"]
        self.compute_ms += row["compute_sum_ms"]
        self.batch_rows += row["batch_size_sum"]
        self.payload_bytes += row["payload_bytes"]
        metrics.hist_merge(self.hist, row["latency_hist"])
        metrics.hist_merge(self.batch_hist, row["batch_hist"])
        metrics.hist_merge(self.statuses, row["status_counts"])

    def summary(self) -> dict[str, Any]:
        ok = self.count - self.errors
        return {
            "count": self.count,
            "errors": self.errors,
            "error_rate": round(self.errors / self.count, 6) if self.count else None,
            "latency_ms": {
                "mean": round(self.latency_ms / self.count, 4) if self.count else None,
                **metrics.quantiles(self.hist, QUANTILES),
            },
            "queue_ms": {"mean": round(self.queue_ms / ok, 4) if ok else None},
            "compute_ms": {"mean": round(self.compute_ms / ok, 4) if ok else None},
            "batch_size": {
                "mean": round(self.batch_rows / ok, 3) if ok else None,
                "histogram": batch_histogram(self.batch_hist),
            },
            "payload_bytes": self.payload_bytes,
            "status_counts": dict(sorted(self.statuses.items())),
        }


FIELDS = (
    "version_id",
    "minute",
    "source",
    "alias",
    "count",
    "errors",
    "latency_sum_ms",
    "queue_sum_ms",
    "compute_sum_ms",
    "batch_size_sum",
    "payload_bytes",
    "latency_hist",
    "batch_hist",
    "status_counts",
)


def batch_histogram(hist: dict[str, int]) -> dict[str, int]:
    """Batch-size buckets with readable names: '1', '2', '3-4', '5-8', …"""
    named = {}
    for key in sorted(hist, key=int):
        k = int(key)
        low, high = (2 ** (k - 1) + 1 if k else 1), 2**k
        named[str(high) if low == high else f"{low}-{high}"] = hist[key]
    return named


def version_stats(model: RegisteredModel, window: str, number: int | None = None) -> dict[str, Any]:
    """Triton-style statistics of a model's versions over a window (one version when `number` is given)."""
    versions = model.versions.order_by("version")
    if number is not None:
        versions = versions.filter(version=number)
        if not versions.exists():
            raise NotFound(f"Version {number} of model {model.name!r} not found.")
    per_version: dict[int, Totals] = defaultdict(Totals)
    by_source: dict[int, dict[str, Totals]] = defaultdict(lambda: defaultdict(Totals))
    by_alias: dict[int, dict[str, Totals]] = defaultdict(lambda: defaultdict(Totals))
    for row in buckets_since(window, versions).values(*FIELDS):
        per_version[row["version_id"]].add(row)
        by_source[row["version_id"]][row["source"]].add(row)
        by_alias[row["version_id"]][row["alias"] or "(pinned)"].add(row)
    span, _ = WINDOWS[window]
    stats = []
    for version in versions:
        totals = per_version[version.pk]
        stats.append({
            "name": model.name, "version": str(version.version), "status": version.status,
            "aliases": sorted(a.name for a in version.aliases.all()),
            "inference_count": totals.batch_rows, "execution_count": totals.count,
            "requests_per_second": round(totals.count / span.total_seconds(), 4),
            **totals.summary(),
            "by_source": {k: v.summary() for k, v in sorted(by_source[version.pk].items())},
            "by_alias": {k: {"count": v.count, "errors": v.errors} for k, v in sorted(by_alias[version.pk].items())},
        })  # fmt: skip
    return {"window": window, "since": (timezone.now() - span).isoformat(), "model_stats": stats}


def series(window: str, versions: QuerySet[ModelVersion] | None = None, *, split: bool = False) -> dict[str, Any]:
    """Time series of a window in steps (minute / 15 min / hour): totals, or per version with `split`."""
    span, step = WINDOWS[window]
    now = timezone.now()
    start = int((now - span).timestamp() // step * step)
    points = int(span.total_seconds() // step) + 1
    cells: dict[Any, list[Totals]] = defaultdict(lambda: [Totals() for _ in range(points)])
    overall = Totals()
    labels: dict[int, str] = {}
    rows = buckets_since(window, versions).values(*FIELDS, "version__version", "version__model__name")
    for row in rows:
        slot = int((row["minute"].timestamp() - start) // step)
        if not 0 <= slot < points:
            continue
        key = row["version_id"] if split else "all"
        labels[row["version_id"]] = f"{row['version__model__name']} v{row['version__version']}"
        cells[key][slot].add(row)
        overall.add(row)
    times = [datetime.fromtimestamp(start + i * step, tz=now.tzinfo).isoformat() for i in range(points)]
    out = []
    for key, slots in cells.items():
        out.append({
            "name": labels[key] if split else "all models",
            "rps": [round(t.count / step, 4) for t in slots],
            "error_rate": [round(t.errors / t.count, 4) if t.count else None for t in slots],
            "p50": [metrics.quantiles(t.hist, (0.5,))["p50"] for t in slots],
            "p95": [metrics.quantiles(t.hist, (0.95,))["p95"] for t in slots],
            "p99": [metrics.quantiles(t.hist, (0.99,))["p99"] for t in slots],
            "queue_ms": [round(t.queue_ms / (t.count - t.errors), 4) if t.count > t.errors else None for t in slots],
            "compute_ms": [round(t.compute_ms / (t.count - t.errors), 4) if t.count > t.errors else None
                           for t in slots],
        })  # fmt: skip
    return {"window": window, "step_seconds": step, "times": times, "series": sorted(out, key=lambda s: s["name"]),
            "totals": overall.summary()}  # fmt: skip


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


# --- the promotion gate -----------------------------------------------------------------------


class GateRefused(Conflict):
    """The evaluation gate refuses to move the alias; `figures` holds what it compared."""

    code = "gate_refused"

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message, field="version")
        self.figures = figures


def gate_can_override(user: Any, model: RegisteredModel) -> bool:
    """Who may force a promotion past the gate: owners and staff (registry.access)."""
    return access.can_override_gate(user, model)


def gate_set(
    *, actor: Any, model: RegisteredModel, dataset: EvaluationDataset, metric: str = GateMetric.ACCURACY,
    tolerance: float = 0.0, min_value: float | None = None, max_p95_ms: float | None = None,
    alias: str = "production", enabled: bool = True,
) -> PromotionGate:  # fmt: skip
    """Require an evaluation on `dataset` before `alias` moves (created or replaced)."""
    from registry.services import alias_name_check, audit_record

    alias_name_check(alias)
    if dataset.model_id != model.pk:
        raise InvalidInput(f"Dataset {dataset.name!r} belongs to another model.", field="dataset")
    if metric not in GateMetric.values:
        raise InvalidInput(f"metric must be one of {', '.join(GateMetric.values)}.", field="metric")
    regression = metric in (GateMetric.MAE, GateMetric.RMSE, GateMetric.R2)
    if regression != (dataset.task == TaskType.REGRESSION):
        raise InvalidInput(f"Metric {metric!r} does not apply to a {dataset.task} dataset.", field="metric")
    if tolerance < 0:
        raise InvalidInput("tolerance must be 0 or more.", field="tolerance")
    if max_p95_ms is not None and max_p95_ms <= 0:
        raise InvalidInput("max_p95_ms must be positive.", field="max_p95_ms")
    values = {"enabled": enabled, "alias": alias, "dataset": dataset, "metric": metric, "tolerance": tolerance,
              "min_value": min_value, "max_p95_ms": max_p95_ms, "updated_by": actor}  # fmt: skip
    with transaction.atomic():
        gate, _ = PromotionGate.objects.update_or_create(model=model, defaults=values)
        audit_record(actor, "gate.set", model=model, object_type="gate", object_repr=alias,
                     after={"dataset": dataset.name, "metric": metric, "tolerance": tolerance, "min_value": min_value,
                            "max_p95_ms": max_p95_ms, "enabled": enabled})  # fmt: skip
    return gate


def gate_delete(*, actor: Any, model: RegisteredModel) -> None:
    from registry.services import audit_record

    with transaction.atomic():
        deleted, _ = PromotionGate.objects.filter(model=model).delete()
        if not deleted:
            raise NotFound(f"Model {model.name!r} has no promotion gate.")
        audit_record(actor, "gate.delete", model=model, object_type="gate", object_repr="gate")


def _figure(run: EvaluationRun | None, metric: str) -> float | None:
    if run is None:
        return None
    value = run.metrics.get(metric)
    return float(value) if value is not None else None


def gate_evaluate(gate: PromotionGate, candidate: ModelVersion) -> tuple[bool, dict[str, Any], list[str]]:
    """Whether a version passes the gate, the figures compared, and the reasons it fails."""
    latest = latest_runs(gate.model)
    run = latest.get((candidate.pk, gate.dataset_id))
    holder = gate.model.aliases.select_related("version").filter(name=gate.alias).first()
    baseline = latest.get((holder.version_id, gate.dataset_id)) if holder else None
    lower = gate.metric in LOWER_IS_BETTER
    value, reference = _figure(run, gate.metric), _figure(baseline, gate.metric)
    figures: dict[str, Any] = {
        "dataset": gate.dataset.name, "metric": gate.metric, "candidate_version": candidate.version,
        "candidate_run": str(run.pk) if run else None, "candidate_value": value,
        "baseline_version": holder.version.version if holder else None, "baseline_value": reference,
        "tolerance": gate.tolerance, "min_value": gate.min_value, "max_p95_ms": gate.max_p95_ms,
        "candidate_p95_ms": run.metrics.get("latency_ms", {}).get("p95") if run else None,
    }  # fmt: skip
    reasons = []
    if value is None:
        reasons.append(f"v{candidate.version} has no finished evaluation on dataset {gate.dataset.name!r}")
        return False, figures, reasons
    if reference is not None:
        required = reference + gate.tolerance if lower else reference - gate.tolerance
        figures["required"] = required
        if (value > required) if lower else (value < required):
            reasons.append(
                f"{gate.metric} {value:.4g} is {'above' if lower else 'below'} the required {required:.4g} "
                f"({gate.alias} v{figures['baseline_version']} has {reference:.4g}, tolerance {gate.tolerance:g})"
            )
    if gate.min_value is not None and ((value > gate.min_value) if lower else (value < gate.min_value)):
        reasons.append(f"{gate.metric} {value:.4g} is {'above the ceiling' if lower else 'below the floor'} "
                       f"{gate.min_value:g}")  # fmt: skip
    p95 = figures["candidate_p95_ms"]
    if gate.max_p95_ms is not None and p95 is not None and p95 > gate.max_p95_ms:
        reasons.append(f"p95 batch latency {p95:.4g} ms is above the bound {gate.max_p95_ms:g} ms")
    return not reasons, figures, reasons


def gate_check(*, actor: Any, model: RegisteredModel, alias: str, version_number: int, force: bool = False,
               action: str = "alias.move") -> dict[str, Any] | None:  # fmt: skip
    """Called before an alias moves: None to proceed, the figures of a forced pass, or GateRefused.

    With no finished evaluation of the candidate, the gate starts one (unless one is
    already queued or running) and refuses until it has finished. Roll backs are not gated.
    """
    gate = PromotionGate.objects.select_related("dataset", "model").filter(model=model, enabled=True).first()
    if gate is None or gate.alias != alias or action == "alias.rollback":
        return None
    candidate = model.versions.filter(version=version_number).first()
    holder = model.aliases.filter(name=alias).values_list("version__version", flat=True).first()
    if candidate is None or candidate.status != VersionStatus.READY or holder == version_number:
        return None  # alias_set refuses or does nothing on its own
    passed, figures, reasons = gate_evaluate(gate, candidate)
    if passed:
        return None
    if force:
        if not gate_can_override(actor, model):
            raise GateRefused(f"Only a user with the right to override the gate may force v{version_number} "
                              f"to {alias}: {'; '.join(reasons)}.", figures)  # fmt: skip
        return {**figures, "reasons": reasons, "forced": True}
    if figures["candidate_run"] is None:
        active = EvaluationRun.objects.filter(version=candidate, dataset=gate.dataset, status__in=RUN_ACTIVE).first()
        if active is None:
            active = evaluation_start(actor=actor, version=candidate, dataset=gate.dataset)
        figures["pending_run"] = str(active.pk)
        reasons[0] += f"; evaluation {active.short_id} is {active.status}, promote again once it has succeeded"
    raise GateRefused(f"The promotion gate refuses v{version_number} for {alias}: {'; '.join(reasons)}.", figures)


def gate_override_record(actor: Any, model: RegisteredModel, alias: str, figures: dict[str, Any]) -> None:
    """Audit a promotion forced past the gate (inside the alias move's transaction)."""
    from registry.services import audit_record

    audit_record(actor, "gate.override", model=model, object_type="gate", object_repr=alias,
                 before={"version": figures.get("baseline_version")}, after=figures)  # fmt: skip
