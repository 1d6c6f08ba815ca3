"""Serving metrics and token usage (per-minute aggregates), evaluation datasets and runs, promotion gates."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models

from inference.runs.models import ACTIVE_STATUSES, TrackedRun
from inference.runs.models import RunStatus as RunStatus


class Source(models.TextChoices):
    V2 = "v2", "Open Inference Protocol v2"
    NATIVE = "native", "native REST / try-it"
    JOB = "job", "batch job"
    OPENAI = "v1", "OpenAI-compatible /v1"
    GRPC = "grpc", "Open Inference Protocol v2 over gRPC"


class MetricBucket(models.Model):
    """One minute of one version's traffic as seen by one process (never a row per request).

    Each web or worker process merges what it recorded into its own rows (keyed by
    `process`), so flushes from many processes never contend on a row; reads sum them.
    `latency_hist` counts requests per log-spaced latency bucket (see monitoring.metrics)
    and `batch_hist` per batch-size bucket (powers of two).

    Generated answers (text generation) add their timing: `generated` answers, their time
    to first token (sum and histogram), the gaps between their streamed tokens (sum, count
    and histogram) and their decoding (the tokens after the first and the time from first
    to last token, for output tokens/s). The serving plane reports that timing without the
    alias, so it sits in the row without one.
    """

    version = models.ForeignKey("registry.ModelVersion", on_delete=models.CASCADE, related_name="metric_buckets")
    minute = models.DateTimeField(db_index=True)
    source = models.CharField(max_length=8, choices=Source.choices)
    alias = models.CharField(max_length=32, blank=True, help_text="Alias the caller used; blank for a pinned version.")
    process = models.CharField(max_length=80)
    count = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    latency_sum_ms = models.FloatField(default=0.0)
    queue_sum_ms = models.FloatField(default=0.0)
    compute_sum_ms = models.FloatField(default=0.0)
    batch_size_sum = models.PositiveBigIntegerField(default=0)
    payload_bytes = models.PositiveBigIntegerField(default=0)
    latency_hist = models.JSONField(default=dict)
    batch_hist = models.JSONField(default=dict)
    status_counts = models.JSONField(default=dict)
    generated = models.PositiveIntegerField(default=0)
    ttft_sum_ms = models.FloatField(default=0.0)
    ttft_hist = models.JSONField(default=dict)
    inter_token_sum_ms = models.FloatField(default=0.0)
    inter_token_count = models.PositiveBigIntegerField(default=0)
    inter_token_hist = models.JSONField(default=dict)
    decode_tokens = models.PositiveBigIntegerField(default=0)
    decode_sum_ms = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["version", "minute", "source", "alias", "process"], name="metric_bucket_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.version_id}@{self.minute:%Y-%m-%d %H:%M} {self.source} ({self.count})"


class UsageBucket(models.Model):
    """One minute of model tokens used on one version by one caller, as seen by one process.

    The caller is a user and, for a program, the API token it sent (blank for a browser
    session). Like MetricBucket, each process merges into rows of its own (`process`), and
    reads sum them. Rows outlive a deleted token or user (SET_NULL): chargeback needs the
    totals even then.
    """

    version = models.ForeignKey("registry.ModelVersion", on_delete=models.CASCADE, related_name="usage_buckets")
    minute = models.DateTimeField(db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")  # fmt: skip
    token = models.ForeignKey("accounts.ApiToken", null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")  # fmt: skip
    process = models.CharField(max_length=80)
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        # Not unique: NULL users and tokens never compare equal, and only one process writes its rows.
        indexes = [models.Index(fields=["minute", "user"]), models.Index(fields=["version", "minute"])]

    def __str__(self) -> str:
        return f"{self.version_id}@{self.minute:%Y-%m-%d %H:%M} user {self.user_id} token {self.token_id}"


class TaskType(models.TextChoices):
    CLASSIFICATION = "classification", "classification"
    REGRESSION = "regression", "regression"


class DatasetFormat(models.TextChoices):
    NPZ = "npz", ".npz (named input arrays + labels/targets)"
    CSV = "csv", "CSV (feature columns + label/target, or text + label)"
    JSON_LINES = "jsonl", "JSON lines (text + label per line)"


class EvaluationDataset(models.Model):
    """Labelled data for a model, checked against its signature and stored normalised to .npz."""

    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.CASCADE, related_name="eval_datasets")
    name = models.CharField(max_length=64)
    description = models.TextField(blank=True)
    task = models.CharField(max_length=16, choices=TaskType.choices)
    source_format = models.CharField(max_length=8, choices=DatasetFormat.choices)
    filename = models.CharField(max_length=255, blank=True)
    path = models.CharField(max_length=500, help_text="Normalised .npz in the artifact storage.")
    rows = models.PositiveIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    num_classes = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "name"]
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="eval_dataset_unique_name")]

    def __str__(self) -> str:
        return f"{self.model.name}/{self.name}"

    @property
    def target_key(self) -> str:
        return "labels" if self.task == TaskType.CLASSIFICATION else "targets"


# Evaluation runs share the tracked-run states; the names stay for monitoring's callers.
RUN_ACTIVE = ACTIVE_STATUSES


class EvaluationRun(TrackedRun):
    """One version evaluated on one dataset by a worker; its state lives here."""

    noun: ClassVar[str] = "evaluation"

    version = models.ForeignKey("registry.ModelVersion", on_delete=models.CASCADE, related_name="eval_runs")
    dataset = models.ForeignKey(EvaluationDataset, on_delete=models.CASCADE, related_name="runs")
    batch_size = models.PositiveIntegerField()
    metrics = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta(TrackedRun.Meta):
        indexes = [models.Index(fields=["status", "heartbeat_at"]), models.Index(fields=["version", "dataset"])]

    def __str__(self) -> str:
        return f"evaluation {self.short_id} ({self.version} on {self.dataset.name}, {self.status})"


class GateMetric(models.TextChoices):
    ACCURACY = "accuracy", "accuracy (higher is better)"
    MACRO_F1 = "macro_f1", "macro F1 (higher is better)"
    R2 = "r2", "R² (higher is better)"
    MAE = "mae", "MAE (lower is better)"
    RMSE = "rmse", "RMSE (lower is better)"


LOWER_IS_BETTER = {GateMetric.MAE, GateMetric.RMSE}


class PromotionGate(models.Model):
    """Before `alias` moves to a new version, that version must pass an evaluation on `dataset`."""

    model = models.OneToOneField("registry.RegisteredModel", on_delete=models.CASCADE, related_name="promotion_gate")
    enabled = models.BooleanField(default=True)
    alias = models.CharField(max_length=32, default="production")
    # Deleting a dataset a gate uses is refused by dataset_delete; a model delete takes both.
    dataset = models.ForeignKey(EvaluationDataset, on_delete=models.CASCADE, related_name="gates")
    metric = models.CharField(max_length=16, choices=GateMetric.choices, default=GateMetric.ACCURACY)
    # The candidate may be at most this much worse than the alias's current holder.
    tolerance = models.FloatField(default=0.0)
    min_value = models.FloatField(null=True, blank=True, help_text="Absolute floor (ceiling for lower-is-better).")
    max_p95_ms = models.FloatField(null=True, blank=True, help_text="Bound on the run's p95 batch latency.")
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"gate on {self.model.name}:{self.alias} ({self.metric} on {self.dataset.name})"
