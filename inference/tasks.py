"""Celery entry point of batch jobs, and what one run of a job does on a worker.

A run claims the job (one more attempt), feeds its rows to the model in chunks, reports
progress, and saves outputs in parts: a run that is redelivered after its worker died
resumes after the last saved part, and a run nearing the task time limit saves and hands
the rest to a fresh task. Every update is conditional on the run's own attempt, so a
run that lost its claim (cancelled, superseded) stops instead of writing over another.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from inference import telemetry
from inference.jobs import batched_layout, job_enqueue, npz_load, npz_save, paths_delete
from inference.models import ACTIVE_STATUSES, BatchJob, DataFormat, JobStatus
from inference.services import exception_summary
from registry.artifacts import artifact_storage

logger = logging.getLogger(__name__)

# A worker that keeps dying on a job (a model that crashes the process) must not get it for ever.
MAX_JOB_ATTEMPTS = 3
# Progress (and the cancel flag) go through the database at most this often, and outputs
# are saved at most this often: a tiny model runs thousands of chunks a second.
PROGRESS_SECONDS = 0.5
CHECKPOINT_SECONDS = 30.0


@shared_task(name="inference.tasks.batch_job_run", acks_late=True, reject_on_worker_lost=True)
def batch_job_run(job_id: str) -> str:
    """Run (or resume) a batch job on this worker; redelivered if the worker dies."""
    return job_run(job_id)


@dataclass
class _Run:
    """One claim of a job by a worker: its updates land only while the claim holds."""

    job: BatchJob
    attempt: int
    labels: list[str]
    parts: list[str]
    pending_from: int
    pending: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def owned(self) -> QuerySet[BatchJob]:
        return BatchJob.objects.filter(pk=self.job.pk, status=JobStatus.RUNNING, attempts=self.attempt)


def _claim(job_id: str) -> _Run | str:
    now = timezone.now()
    with transaction.atomic():
        job = BatchJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.status not in ACTIVE_STATUSES:
            return job.status if job else "missing"
        failure = ""
        if job.version_id is None:
            failure = "The model version was deleted before the job could run."
        elif job.attempts >= MAX_JOB_ATTEMPTS:
            failure = (
                f"The job was interrupted {MAX_JOB_ATTEMPTS} times (the worker process died while running it); "
                "it was not retried again."
            )
        if job.cancel_requested or failure:
            job.status = JobStatus.FAILED if failure else JobStatus.CANCELLED
            job.error, job.finished_at = failure, now
            job.save(update_fields=["status", "error", "finished_at"])
            parts = list(job.parts)
            transaction.on_commit(lambda: paths_delete(parts))
            return job.status
        job.attempts += 1
        job.status, job.heartbeat_at, job.rows_done = JobStatus.RUNNING, now, job.rows_saved
        job.started_at = job.started_at or now
        job.save(update_fields=["attempts", "status", "heartbeat_at", "rows_done", "started_at"])
    # The version may have been deleted since (the job keeps its name): loading says so.
    labels = list(job.version.labels) if job.version is not None else []
    return _Run(job, job.attempts, labels, list(job.parts), pending_from=job.rows_saved)


def _stopped(run: _Run) -> str:
    """The run lost its claim: cancelled by a user (finish as cancelled) or superseded by another run."""
    now = timezone.now()
    cancelled = run.owned().filter(cancel_requested=True)
    if cancelled.update(status=JobStatus.CANCELLED, finished_at=now, heartbeat_at=now, parts=[]):
        paths_delete(run.parts)
        logger.info("%s cancelled", run.job)
        return JobStatus.CANCELLED
    return BatchJob.objects.filter(pk=run.job.pk).values_list("status", flat=True).first() or "missing"


def _fail(run: _Run, error: str) -> str:
    now = timezone.now()
    if run.owned().update(status=JobStatus.FAILED, error=error[:2000], finished_at=now, heartbeat_at=now, parts=[]):
        paths_delete(run.parts)
        logger.info("%s failed: %s", run.job, error)
        return JobStatus.FAILED
    return _stopped(run)


def _progress(run: _Run, rows: int) -> bool:
    update = {"rows_done": rows, "heartbeat_at": timezone.now()}
    return bool(run.owned().filter(cancel_requested=False).update(**update))


def _save(run: _Run, rows: int) -> bool:
    """Store the outputs since the last save as one part and record how far the job got."""
    parts, written = run.parts, None
    if run.pending:
        outputs = {name: np.concatenate(chunks) for name, chunks in run.pending.items()}
        written = npz_save(f"{run.job.storage_prefix}/parts/{run.pending_from:012d}.npz", outputs)
        parts = [*parts, written]
    update = {"parts": parts, "rows_saved": rows, "rows_done": rows, "heartbeat_at": timezone.now()}
    if not run.owned().filter(cancel_requested=False).update(**update):
        paths_delete([written] if written else [])
        return False
    run.parts, run.pending, run.pending_from = parts, {}, rows
    return True


def _hand_over(run: _Run, rows: int) -> str:
    """Save, then leave the rest to a fresh task before this one reaches its time limit."""
    if not _save(run, rows):
        return _stopped(run)
    with transaction.atomic():
        if not run.owned().filter(cancel_requested=False).update(status=JobStatus.QUEUED, attempts=0):
            return _stopped(run)
        transaction.on_commit(lambda: job_enqueue(run.job.pk))
    logger.info("%s continues in a new task after %s rows", run.job, rows)
    return JobStatus.QUEUED


def _forward(loaded: Any, arrays: dict[str, np.ndarray], start: int, stop: int, batched: bool) -> list[tuple]:
    """Outputs (name, rows-first array) of rows start..stop, in signature order."""
    if batched:
        outputs = loaded.predict({name: array[start:stop] for name, array in arrays.items()})
        for name, _, array in outputs:
            if array.ndim == 0 or array.shape[0] != stop - start:
                raise ValueError(f"output {name!r} has shape {list(array.shape)} for {stop - start} input rows")
        return [(name, array) for name, _, array in outputs]
    # No batch dimension in the signature: one example per forward, outputs stacked as rows.
    per_row = [loaded.predict({name: array[row] for name, array in arrays.items()}) for row in range(start, stop)]
    return [(name, np.stack([outputs[k][2] for outputs in per_row])) for k, (name, _, _) in enumerate(per_row[0])]


def _result_store(run: _Run) -> str:
    """Join the parts and write the result in the job's format; returns its storage path."""
    loaded_parts = [npz_load(path) for path in run.parts]
    outputs = {name: np.concatenate([part[name] for part in loaded_parts]) for name in loaded_parts[0]}
    first = next(iter(outputs.values()))
    labels = None
    if run.labels and "label" not in outputs and first.ndim == 2 and first.shape[1] == len(run.labels):
        labels = np.asarray(run.labels)[first.argmax(axis=1)]
    name = f"{run.job.storage_prefix}/result.{run.job.result_format}"
    if run.job.result_format == DataFormat.NPZ:
        return npz_save(name, {**outputs, **({"label": labels} if labels is not None else {})})
    with tempfile.TemporaryFile() as tmp:
        for row in range(run.job.total_rows):
            line = {key: array[row].tolist() for key, array in outputs.items()}
            if labels is not None:
                line["label"] = str(labels[row])
            tmp.write(json.dumps(line).encode() + b"\n")
        tmp.seek(0)
        return artifact_storage().save(name, File(tmp, name="result.jsonl"))


def _segment_seconds() -> float:
    """How long one task may work on a job before it hands over (well inside the soft time limit)."""
    return max(5.0, settings.CELERY_TASK_SOFT_TIME_LIMIT * 0.75)


def job_run(job_id: str) -> str:
    """Run a job's rows through its model on this worker, chunk by chunk; returns the status it ends in."""
    from inference.cache import ModelUnavailable, model_cache

    claimed = _claim(job_id)
    if isinstance(claimed, str):
        return claimed
    run, job = claimed, claimed.job
    try:
        if job.version_id is None:
            raise ModelUnavailable("The model version was deleted after the job was submitted.")
        loaded = model_cache().get(job.version_id)
        arrays = npz_load(job.input_path)
    except Exception as exc:  # ModelUnavailable, storage errors: the job cannot run; say why
        return _fail(run, f"The job could not start: {exception_summary(exc)}")
    batched = batched_layout(loaded.signature)
    step = job.chunk_size if batched and loaded.batching else 1
    start = job.rows_saved
    clock = time.monotonic()
    deadline, last_progress, last_save = clock + _segment_seconds(), clock, clock
    try:
        while start < job.total_rows:
            stop = min(start + step, job.total_rows)
            began = time.perf_counter()
            try:
                outputs = _forward(loaded, arrays, start, stop, batched)
            except SoftTimeLimitExceeded:
                raise
            except Exception as exc:
                telemetry.job_chunk(job, stop - start, began, ok=False)
                return _fail(run, f"Rows {start + 1} to {stop}: the model failed: {exception_summary(exc)}")
            telemetry.job_chunk(job, stop - start, began, ok=True)
            for name, array in outputs:
                run.pending.setdefault(name, []).append(array)
            start, now = stop, time.monotonic()
            if start >= job.total_rows:
                break
            if now >= deadline:
                return _hand_over(run, start)
            if now - last_save >= CHECKPOINT_SECONDS:
                if not _save(run, start):
                    return _stopped(run)
                last_save = last_progress = now
            elif now - last_progress >= PROGRESS_SECONDS:
                if not _progress(run, start):
                    return _stopped(run)
                last_progress = now
        if not _save(run, job.total_rows):
            return _stopped(run)
        path = _result_store(run)
    except SoftTimeLimitExceeded:
        return _fail(run, f"A chunk after row {start} ran past the task time limit; use a smaller chunk_size.")
    except Exception as exc:  # a part or the result could not be joined or written
        logger.exception("%s: saving outputs failed", job)
        return _fail(run, f"The outputs could not be saved: {exception_summary(exc)}")
    finished = timezone.now()
    done = {"rows_done": job.total_rows, "result_path": path, "finished_at": finished, "heartbeat_at": finished,
            "parts": []}  # fmt: skip
    if not run.owned().update(status=JobStatus.SUCCEEDED, **done):
        paths_delete([path])
        return _stopped(run)
    paths_delete(run.parts)
    logger.info("%s succeeded: %s rows", job, job.total_rows)
    return JobStatus.SUCCEEDED
