"""Batch prediction jobs: a file of inputs run through a model version on a worker."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models

from inference.runs.models import ACTIVE_STATUSES as ACTIVE_STATUSES
from inference.runs.models import ResumableRun, RunStatus, TrackedRun

# A job's states are every tracked run's; the name stays for the job code and its callers.
JobStatus = RunStatus


class DataFormat(models.TextChoices):
    NPZ = "npz", ".npz (one array per tensor, rows first)"
    JSONL = "jsonl", "JSON lines (one object per row)"


class BatchJob(ResumableRun):
    """One batch prediction job; its state lives here, not in the Celery result backend.

    The input (normalised to .npz), the partial outputs of finished segments and the
    result live in artifact storage under `jobs/<id>/`.
    """

    noun: ClassVar[str] = "job"
    retry_hint: ClassVar[str] = "submit it again"

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
    input_format = models.CharField(max_length=8, choices=DataFormat.choices)
    result_format = models.CharField(max_length=8, choices=DataFormat.choices)
    input_filename = models.CharField(max_length=255, blank=True)
    input_path = models.CharField(max_length=500, help_text="Normalised input (.npz) in the artifact storage.")
    result_path = models.CharField(max_length=500, blank=True)
    chunk_size = models.PositiveIntegerField()

    class Meta(ResumableRun.Meta):
        indexes = [models.Index(fields=["status", "heartbeat_at"]), models.Index(fields=["created_by", "-created_at"])]

    def __str__(self) -> str:
        return f"job {self.short_id} ({self.model_name} v{self.version_number}, {self.status})"

    @property
    def storage_prefix(self) -> str:
        return f"jobs/{self.id}"

    def claim_refusal(self) -> str:
        return "" if self.version_id is not None else "The model version was deleted before the job could run."


class ConversionTarget(models.TextChoices):
    ONNX = "onnx", "ONNX (torch.onnx.export)"
    ONNX_INT8 = "onnx-int8", "ONNX int8 (ONNX Runtime dynamic quantisation)"
    FP16 = "fp16", "ONNX fp16 (GPU hosts)"


class ConversionRun(TrackedRun):
    """One conversion of a ready version into a derived one (ONNX, ONNX int8, fp16).

    Its "rows" are the steps of the recipe (export, quantise, compare, validate, store), so
    progress, cancel, heartbeat and recovery are every tracked run's. The child version is
    written only at the very end, ready, in the step that succeeds the run: a failed,
    cancelled or interrupted conversion leaves no version and no artifact behind.
    """

    noun: ClassVar[str] = "conversion"
    retry_hint: ClassVar[str] = "start the conversion again"

    version = models.ForeignKey(
        "registry.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="conversions"
    )
    model_name = models.CharField(max_length=64, db_index=True)
    version_number = models.PositiveIntegerField()
    target = models.CharField(max_length=16, choices=ConversionTarget.choices)
    options = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="conversions"
    )
    child = models.ForeignKey(
        "registry.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="converted_by"
    )
    # What the run measured: the comparison, latencies, sizes, tool versions, sha256s, exporter.
    result = models.JSONField(default=dict, blank=True)

    class Meta(TrackedRun.Meta):
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"conversion {self.short_id} ({self.model_name} v{self.version_number} → {self.target}, {self.status})"

    def claim_refusal(self) -> str:
        return "" if self.version_id is not None else "The source version was deleted before the conversion could run."
