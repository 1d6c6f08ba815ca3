"""Claim, heartbeat, progress, fail, retry limit, cancel and stale sweep of tracked runs.

A worker claims a run by raising its `attempts`; every later update it makes is
conditional on `status=running` and that attempt (`Claim.owned`), so a run that lost its
claim (cancelled, swept as stale, superseded by a redelivered message) stops instead of
writing over another's state.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import numpy as np
from celery import Task
from django.apps import apps
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from core.errors import Conflict, NotFound
from inference.runs.arrays import npz_save, paths_delete
from inference.runs.models import ACTIVE_STATUSES, ResumableRun, RunStatus, TrackedRun

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=TrackedRun)

# A worker that keeps dying on a run (a model that crashes the process) must not get it for ever.
MAX_ATTEMPTS = 3
ERROR_CHARS = 2000


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _end_fields(run: TrackedRun) -> dict[str, Any]:
    """What an ended run forgets: the parts of a resumable run (their files are deleted)."""
    return {"parts": []} if isinstance(run, ResumableRun) else {}


def _parts(run: TrackedRun) -> list[str]:
    return list(run.parts) if isinstance(run, ResumableRun) else []


@dataclass
class Claim(Generic[R]):
    """One claim of a run by a worker: its updates land only while the claim holds."""

    run: R
    attempt: int
    # Stored partial outputs (resumable runs), and those computed since the last save.
    parts: list[str] = field(default_factory=list)
    pending: dict[str, list[np.ndarray]] = field(default_factory=dict)
    pending_from: int = 0

    def owned(self) -> QuerySet[R]:
        """The run's row, while this claim still holds it."""
        return type(self.run)._default_manager.filter(pk=self.run.pk, status=RunStatus.RUNNING, attempts=self.attempt)

    def _live(self) -> QuerySet[R]:
        return self.owned().filter(cancel_requested=False)

    def heartbeat(self, rows: int | None = None) -> bool:
        """Say the run is alive (and how many rows are done); False once the claim is lost or cancelled."""
        update: dict[str, Any] = {"heartbeat_at": timezone.now()}
        if rows is not None:
            update["rows_done"] = rows
        return bool(self._live().update(**update))

    def keep(self, outputs: dict[str, np.ndarray]) -> None:
        """Hold a chunk's outputs until the next checkpoint (or the end)."""
        for name, array in outputs.items():
            self.pending.setdefault(name, []).append(array)

    def checkpoint(self, rows: int) -> bool:
        """Store the outputs since the last save as one part and record how far the run got.

        Only for resumable runs; False (and nothing left behind) once the claim is lost.
        """
        run = self.run
        assert isinstance(run, ResumableRun)
        parts, written = self.parts, None
        if self.pending:
            outputs = {name: np.concatenate(chunks) for name, chunks in self.pending.items()}
            written = npz_save(f"{run.storage_prefix}/parts/{self.pending_from:012d}.npz", outputs)
            parts = [*parts, written]
        update = {"parts": parts, "rows_saved": rows, "rows_done": rows, "heartbeat_at": timezone.now()}
        if not self._live().update(**update):
            paths_delete([written] if written else [])
            return False
        self.parts, self.pending, self.pending_from = parts, {}, rows
        return True

    def requeue(self) -> bool:
        """Give the run back to the queue (attempts start again: it made saved progress)."""
        return bool(self._live().update(status=RunStatus.QUEUED, attempts=0))

    def succeed(self, **fields: Any) -> bool:
        """Finish the run with these fields; False if the claim was lost meanwhile."""
        now = timezone.now()
        done = {"rows_done": self.run.total_rows, "finished_at": now, "heartbeat_at": now, **_end_fields(self.run)}
        if not self.owned().update(status=RunStatus.SUCCEEDED, **done, **fields):
            return False
        paths_delete(self.parts)
        logger.info("%s succeeded", self.run)
        return True

    def fail(self, error: str) -> str:
        """Fail the run with a reason a person can act on; returns the status it ends in."""
        now = timezone.now()
        end = {"finished_at": now, "heartbeat_at": now, **_end_fields(self.run)}
        if self.owned().update(status=RunStatus.FAILED, error=error[:ERROR_CHARS], **end):
            paths_delete(self.parts)
            logger.info("%s failed: %s", self.run, error)
            return RunStatus.FAILED
        return self.stopped()

    def stopped(self) -> str:
        """The claim is lost: finish as cancelled if a user asked, else report who has the run now."""
        now = timezone.now()
        end = {"finished_at": now, "heartbeat_at": now, **_end_fields(self.run)}
        if self.owned().filter(cancel_requested=True).update(status=RunStatus.CANCELLED, **end):
            paths_delete(self.parts)
            logger.info("%s cancelled", self.run)
            return RunStatus.CANCELLED
        model = type(self.run)
        return model._default_manager.filter(pk=self.run.pk).values_list("status", flat=True).first() or "missing"


def run_claim(model: type[R], run_id: Any, *, max_attempts: int = MAX_ATTEMPTS) -> Claim[R] | str:
    """Claim a queued (or redelivered running) run for this worker, or say why not.

    Returns the claim, or the status the run is in when there is nothing to run: ended
    already, cancelled, refused by the run itself, or claimed `max_attempts` times.
    """
    now = timezone.now()
    with transaction.atomic():
        run = model._default_manager.select_for_update().filter(pk=run_id).first()
        if run is None or run.status not in ACTIVE_STATUSES:
            return run.status if run else "missing"
        failure = run.claim_refusal()
        if not failure and run.attempts >= max_attempts:
            failure = (
                f"The {run.noun} was interrupted {max_attempts} times (the worker process died while running it); "
                "it was not retried again."
            )
        if run.cancel_requested or failure:
            parts, end = _parts(run), _end_fields(run)
            run.status = RunStatus.FAILED if failure else RunStatus.CANCELLED
            run.error, run.finished_at = failure, now
            for name, value in end.items():
                setattr(run, name, value)
            run.save(update_fields=["status", "error", "finished_at", *end])
            transaction.on_commit(lambda: paths_delete(parts))
            return run.status
        run.attempts += 1
        run.status, run.heartbeat_at, run.rows_done = RunStatus.RUNNING, now, run.resume_from
        run.started_at = run.started_at or now
        run.worker = worker_name()
        run.save(update_fields=["attempts", "status", "heartbeat_at", "rows_done", "started_at", "worker"])
    return Claim(run, run.attempts, parts=_parts(run), pending_from=run.resume_from)


def run_lookup(runs: QuerySet[R], run_id: Any) -> R:
    """The run with this id among `runs` (those a user may see), else NotFound: a run
    someone may not see does not exist for them, and a malformed id is not an error of ours."""
    noun = runs.model.noun.capitalize()
    try:
        key = uuid.UUID(str(run_id))
    except ValueError:
        raise NotFound(f"{noun} {run_id!r} not found.") from None
    run = runs.filter(pk=key).first()
    if run is None:
        raise NotFound(f"{noun} {run_id} not found.")
    return run


def run_enqueue(run: TrackedRun, task: Task, queue: str) -> None:
    """Send a queued run to `queue`; if the broker cannot take it, fail the run saying so."""
    try:
        task.apply_async(args=[str(run.pk)], queue=queue)
    except Exception as exc:  # kombu raises OperationalError and friends
        logger.exception("could not enqueue %s", run)
        type(run)._default_manager.filter(pk=run.pk, status=RunStatus.QUEUED).update(
            status=RunStatus.FAILED,
            finished_at=timezone.now(),
            error=f"The {run.noun} could not be queued (broker unavailable: {exc}). {run.retry_hint.capitalize()}.",
        )


def run_cancel(model: type[R], run_id: Any) -> R:
    """Cancel a run: a queued one at once, a running one at its worker's next heartbeat."""
    with transaction.atomic():
        run = model._default_manager.select_for_update().get(pk=run_id)
        if run.status not in ACTIVE_STATUSES:
            raise Conflict(
                f"{run.noun.capitalize()} {run.short_id} is already {run.status}; "
                f"only queued or running {run.noun}s can be cancelled."
            )
        run.cancel_requested = True
        fields = ["cancel_requested"]
        if run.status == RunStatus.QUEUED:
            parts, end = _parts(run), _end_fields(run)
            run.status, run.finished_at = RunStatus.CANCELLED, timezone.now()
            for name, value in end.items():
                setattr(run, name, value)
            fields += ["status", "finished_at", *end]
            transaction.on_commit(lambda: paths_delete(parts))
        # A running run is only flagged: its worker stops after the chunk in hand.
        run.save(update_fields=fields)
    return run


def stale_cutoff() -> datetime:
    """Runs silent since before this can have no live worker.

    A dead worker's run comes back from the broker (acks_late) within its visibility
    timeout; a run silent for longer than that plus the task time limit lost its message.
    """
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    return timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + timeout + 60)


def stale_expire(model: type[TrackedRun]) -> int:
    """Fail the running runs of one kind that no worker can still be running; returns how many."""
    failed = 0
    cutoff = stale_cutoff()
    for run in model._default_manager.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff):
        error = (
            f"The worker running this {run.noun} ({run.worker or 'unknown'}) stopped reporting and it was not "
            f"redelivered; {run.retry_hint}."
        )
        mine = model._default_manager.filter(pk=run.pk, status=RunStatus.RUNNING, attempts=run.attempts)
        if mine.update(status=RunStatus.FAILED, finished_at=timezone.now(), error=error, **_end_fields(run)):
            paths_delete(_parts(run))
            logger.warning("%s failed: %s", run, error)
            failed += 1
    return failed


def run_kinds() -> list[type[TrackedRun]]:
    """Every installed concrete model that is a tracked run (jobs, evaluations, ...)."""
    return [model for model in apps.get_models() if issubclass(model, TrackedRun)]


def stale_expire_all() -> dict[str, int]:
    """Sweep every kind of tracked run; returns how many of each were failed."""
    return {model._meta.label: stale_expire(model) for model in run_kinds()}
