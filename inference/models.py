"""Batch prediction jobs: a file of inputs run through a model version on a worker."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class JobStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class DataFormat(models.TextChoices):
    NPZ = "npz", ".npz (one array per tensor, rows first)"
    JSONL = "jsonl", "JSON lines (one object per row)"


class BatchJob(models.Model):
    """One batch prediction job; its state lives here, not in the Celery result backend.

    The input (normalised to .npz), the partial outputs of finished segments and the
    result live in artifact storage under `jobs/<id>/`.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # SET_NULL: a job outlives the version it ran (its result stays downloadable); the
    # names are copied so the job still says what it ran, and a job that had not yet run
    # fails with that reason instead of vanishing.
    version = models.ForeignKey(
        "registry.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="batch_jobs"
    )
    model_name = models.CharField(max_length=64, db_index=True)
    version_number = models.PositiveIntegerField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="batch_jobs"
    )
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    error = models.TextField(blank=True)
    input_format = models.CharField(max_length=8, choices=DataFormat.choices)
    result_format = models.CharField(max_length=8, choices=DataFormat.choices)
    input_filename = models.CharField(max_length=255, blank=True)
    input_path = models.CharField(max_length=500, help_text="Normalised input (.npz) in the artifact storage.")
    result_path = models.CharField(max_length=500, blank=True)
    total_rows = models.PositiveIntegerField()
    rows_done = models.PositiveIntegerField(default=0)
    # Rows whose outputs are saved in `parts`: a redelivered or continued run resumes here.
    rows_saved = models.PositiveIntegerField(default=0, editable=False)
    parts = models.JSONField(default=list, blank=True, editable=False)
    chunk_size = models.PositiveIntegerField()
    # Claims by a worker since the job last made saved progress; a worker that keeps dying
    # on this job must not get it for ever.
    attempts = models.PositiveSmallIntegerField(default=0, editable=False)
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "heartbeat_at"]), models.Index(fields=["created_by", "-created_at"])]

    def __str__(self) -> str:
        return f"job {self.short_id} ({self.model_name} v{self.version_number}, {self.status})"

    @property
    def short_id(self) -> str:
        return self.id.hex[:8]

    @property
    def progress(self) -> float:
        """Percentage of rows done, 0 to 100."""
        if self.status == JobStatus.SUCCEEDED:
            return 100.0
        if not self.total_rows:
            return 0.0
        return round(100.0 * min(self.rows_done, self.total_rows) / self.total_rows, 1)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def storage_prefix(self) -> str:
        return f"jobs/{self.id}"
