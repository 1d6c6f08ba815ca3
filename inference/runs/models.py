"""The lifecycle every tracked run shares: status, timestamps, progress, attempts, claim, error.

A tracked run is long work done by a worker on behalf of a user (a batch job, an
evaluation; next, generation batches and model conversions). Its state lives in its own
row, never only in the Celery result backend, so pages and the API read it like any row.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from django.db import models


class RunStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class TrackedRun(models.Model):
    """Abstract: a run's lifecycle fields; concrete kinds add what they run on and what they produce.

    A worker claims a run by raising `attempts`; every later update of that worker is
    conditional on `status=running` and its own attempt (see inference.runs.lifecycle), so a
    run that was cancelled, swept as stale or claimed again is never overwritten.
    """

    # What people call one run of this kind, in messages ("job", "evaluation").
    noun: ClassVar[str] = "run"
    # What a person does after a failure that is not theirs.
    retry_hint: ClassVar[str] = "start it again"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    error = models.TextField(blank=True)
    total_rows = models.PositiveIntegerField()
    rows_done = models.PositiveIntegerField(default=0)
    # Claims by a worker (since the run last made saved progress); a worker that keeps
    # dying on this run must not get it for ever.
    attempts = models.PositiveSmallIntegerField(default=0, editable=False)
    # host:pid of the process holding the latest claim: which worker a stuck run was on.
    worker = models.CharField(max_length=200, blank=True, editable=False)
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    @property
    def short_id(self) -> str:
        return self.id.hex[:8]

    @property
    def progress(self) -> float:
        """Percentage of rows done, 0 to 100."""
        if self.status == RunStatus.SUCCEEDED:
            return 100.0
        if not self.total_rows:
            return 0.0
        return round(100.0 * min(self.rows_done, self.total_rows) / self.total_rows, 1)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def resume_from(self) -> int:
        """The first row a new claim starts at (0: nothing of an earlier claim is kept)."""
        return 0

    def claim_refusal(self) -> str:
        """Why this run can no longer run at all (its inputs are gone, say), else ''."""
        return ""


class ResumableRun(TrackedRun):
    """Abstract: a tracked run that saves its outputs in parts as it goes.

    A redelivered run resumes after the last saved part, and a run nearing the task time
    limit saves and hands the rest to a fresh task (inference.runs.loop).
    """

    # Rows whose outputs are saved in `parts`: a redelivered or continued run resumes here.
    rows_saved = models.PositiveIntegerField(default=0, editable=False)
    parts = models.JSONField(default=list, blank=True, editable=False)

    class Meta(TrackedRun.Meta):
        abstract = True

    @property
    def resume_from(self) -> int:
        return self.rows_saved

    @property
    def storage_prefix(self) -> str:
        """The folder of this run's files in artifact storage."""
        raise NotImplementedError
