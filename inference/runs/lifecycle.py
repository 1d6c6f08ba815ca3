"""Claim, heartbeat, progress, fail, retry limit, cancel and stale sweep of tracked runs.

A worker claims a run by raising its `attempts`; every later update it makes is
conditional on `status=running` and that attempt (`Claim.owned`), so a run that lost its
claim (cancelled, swept as stale, superseded by a redelivered message) stops instead of
writing over another's state.

While a worker holds a run, a thread of its own writes the run's heartbeat every
RUNS_HEARTBEAT_SECONDS (also during a long model load or chunk). So a message redelivered
while that worker lives (a short broker visibility timeout) is not run a second time, and
the sweep on Celery beat sees a run whose worker died (kill -9, out of memory, a container
stopped) within RUNS_STALE_SECONDS: it queues it again, or fails it past the retry limit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import numpy as np
from celery import Task
from django.apps import apps
from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import Q, QuerySet
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


def _holder_gone(worker: str) -> bool:
    """Whether the process named `worker` (host:pid) is known not to run the run any more:
    it is this process (which is claiming it now), or a process of this host that is gone."""
    if worker == worker_name():
        return True
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's process: only its silence (the sweep) tells
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # A zombie (killed, not yet reaped) runs nothing either.
            return stat.read().rpartition(b")")[2].split()[0] == b"Z"
    except FileNotFoundError:
        return True
    except OSError:
        return False


# How each kind of tracked run is sent to its queue (registered by the app that owns the kind).
_enqueuers: dict[type[TrackedRun], Callable[[Any], None]] = {}


def run_kind_register(model: type[TrackedRun], enqueue: Callable[[Any], None]) -> None:
    """Say how the sweep sends a run of this kind to a worker again (its id to its queue)."""
    _enqueuers[model] = enqueue


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

    def alive(self) -> bool:
        """Only say the worker still holds the run (the heartbeat thread); False once the claim is lost."""
        return bool(self.owned().update(heartbeat_at=timezone.now()))

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

    def out_of_memory(self, summary: str) -> str:
        """The worker ran out of memory on this run: queued again (memory may be free on the next
        try, or on another worker) until the retry limit, then failed saying so."""
        run = self.run
        if self.attempt < MAX_ATTEMPTS:
            enqueue = _enqueuers.get(type(run))
            with transaction.atomic():
                if enqueue is not None and self._live().update(status=RunStatus.QUEUED, heartbeat_at=None):
                    transaction.on_commit(lambda: enqueue(run.pk))
                    logger.warning("%s ran out of memory (%s); queued again", run, summary)
                    return RunStatus.QUEUED
        return self.fail(
            f"The {run.noun} ran out of memory on the worker ({self.attempt} of {MAX_ATTEMPTS} attempts; last: "
            f"{summary}); use a smaller batch or chunk size, or a worker with more memory."
        )

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


def out_of_memory(exc: BaseException) -> bool:
    """Whether an exception says the process ran out of (CPU or GPU) memory."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


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
        fresh = run.heartbeat_at is not None and run.heartbeat_at > now - timedelta(seconds=settings.RUNS_STALE_SECONDS)
        if run.status == RunStatus.RUNNING and fresh and not _holder_gone(run.worker):
            # A redelivered message of a run whose worker still beats: not run twice.
            logger.info("%s is held by %s (heartbeat %s); not claimed again", run, run.worker, run.heartbeat_at)
            return RunStatus.RUNNING
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
    """Send a queued run to `queue`, noting when (in `heartbeat_at`, while it is queued).

    If the broker cannot take it, the run stays queued with no such note, and the next sweep
    sends it again: accepted work is never lost to a broker outage.
    """
    queued = type(run)._default_manager.filter(pk=run.pk, status=RunStatus.QUEUED)
    try:
        task.apply_async(args=[str(run.pk)], queue=queue)
    except Exception as exc:  # kombu raises OperationalError and friends
        logger.warning("could not enqueue %s (sent again by the next sweep): %s", run, exc)
        queued.update(heartbeat_at=None)
        return
    queued.update(heartbeat_at=timezone.now())


class _HeartbeatThread(threading.Thread):
    """Writes a claim's heartbeat every RUNS_HEARTBEAT_SECONDS until told to stop."""

    def __init__(self, claim: Claim[Any]) -> None:
        super().__init__(name=f"maas-run-heartbeat-{claim.run.pk}", daemon=True)
        self.claim = claim
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.wait(settings.RUNS_HEARTBEAT_SECONDS):
                try:
                    if not self.claim.alive():
                        return
                except DatabaseError as exc:  # the database is away: the next beat tries again
                    logger.warning("heartbeat of %s failed: %s", self.claim.run, exc)
        finally:
            connections.close_all()  # this thread's own connections


@contextlib.contextmanager
def claim_heartbeat(claim: Claim[Any]) -> Iterator[None]:
    """Keep the claim's heartbeat fresh while the body runs (model loads and long chunks included)."""
    beating = _HeartbeatThread(claim)
    beating.start()
    try:
        yield
    finally:
        # Not joined: a beat may be waiting on a lock the caller's transaction holds.
        beating.stopping.set()


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
    """Runs whose heartbeat is older than this have no live worker (RUNS_STALE_SECONDS)."""
    return timezone.now() - timedelta(seconds=settings.RUNS_STALE_SECONDS)


def _interrupted(run: TrackedRun) -> str:
    return (
        f"The {run.noun} was interrupted {run.attempts} times: its worker ({run.worker or 'unknown'}) stopped "
        f"reporting (it died, was killed or ran out of memory); it was not retried again; {run.retry_hint}."
    )


def stale_expire(model: type[TrackedRun]) -> int:
    """Recover the runs of one kind whose worker is gone; returns how many were queued again or failed.

    A running run silent for RUNS_STALE_SECONDS is queued again and sent to a worker (or, past
    the retry limit, failed with the reason; cancelled if a user asked). A queued run whose
    message is not known to be with the broker (sending failed, or sent RUNS_RESEND_SECONDS
    ago: a broker restarted without its queues) is sent again; a claim never runs it twice.
    """
    manager = model._default_manager
    now = timezone.now()
    enqueue = _enqueuers.get(model)
    acted = 0
    for run in manager.filter(status=RunStatus.RUNNING, heartbeat_at__lt=stale_cutoff()):
        mine = manager.filter(pk=run.pk, status=RunStatus.RUNNING, attempts=run.attempts)
        end = {"finished_at": now, **_end_fields(run)}
        if run.cancel_requested:
            changed, message = mine.update(status=RunStatus.CANCELLED, **end), "cancelled"
        elif run.attempts >= MAX_ATTEMPTS or enqueue is None:
            error = _interrupted(run) if enqueue else (
                f"The worker running this {run.noun} ({run.worker or 'unknown'}) stopped reporting; {run.retry_hint}."
            )  # fmt: skip
            changed, message = mine.update(status=RunStatus.FAILED, error=error[:ERROR_CHARS], **end), error
        else:
            # Its parts stay: a resumable run resumes after the last one saved.
            changed, message = mine.update(status=RunStatus.QUEUED, heartbeat_at=None), "queued again"
        if not changed:
            continue
        acted += 1
        logger.warning("%s (worker %s silent since %s): %s", run, run.worker, run.heartbeat_at, message)
        if run.cancel_requested or message != "queued again":
            paths_delete(_parts(run))
        elif enqueue is not None:
            enqueue(run.pk)
    if enqueue is not None:
        resend = Q(heartbeat_at__isnull=True, created_at__lt=stale_cutoff()) | Q(
            heartbeat_at__lt=now - timedelta(seconds=settings.RUNS_RESEND_SECONDS)
        )
        for run_id in manager.filter(resend, status=RunStatus.QUEUED).values_list("pk", flat=True):
            logger.warning("%s %s was not known to be queued; sending it again", model.noun, run_id)
            enqueue(run_id)
            acted += 1
    return acted


def run_kinds() -> list[type[TrackedRun]]:
    """Every installed concrete model that is a tracked run (jobs, evaluations, ...)."""
    return [model for model in apps.get_models() if issubclass(model, TrackedRun)]


def stale_expire_all() -> dict[str, int]:
    """Sweep every kind of tracked run; returns how many of each were failed."""
    return {model._meta.label: stale_expire(model) for model in run_kinds()}
