"""Admin pages of monitoring: datasets, runs (read-only state) and promotion gates."""

from __future__ import annotations

from django.contrib import admin

from monitoring.models import EvaluationDataset, EvaluationRun, MetricBucket, PromotionGate, UsageBucket


@admin.register(EvaluationDataset)
class EvaluationDatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "task", "source_format", "rows", "created_by", "created_at"]
    list_filter = ["task", "source_format"]
    search_fields = ["name", "model__name"]
    readonly_fields = ["path", "rows", "size_bytes", "num_classes", "task", "source_format"]


@admin.register(EvaluationRun)
class EvaluationRunAdmin(admin.ModelAdmin):
    list_display = ["short_id", "version", "dataset", "status", "progress", "attempts", "created_at", "finished_at"]
    list_filter = ["status", "created_at"]
    list_select_related = ["version__model", "dataset"]
    # State belongs to the worker and the services; the admin only shows it.
    readonly_fields = ["version", "dataset", "status", "error", "batch_size", "total_rows", "rows_done", "attempts",
                       "metrics", "created_by", "started_at", "heartbeat_at", "finished_at"]  # fmt: skip


@admin.register(PromotionGate)
class PromotionGateAdmin(admin.ModelAdmin):
    list_display = ["model", "alias", "enabled", "dataset", "metric", "tolerance", "min_value", "max_p95_ms"]
    list_select_related = ["model", "dataset"]


@admin.register(MetricBucket)
class MetricBucketAdmin(admin.ModelAdmin):
    list_display = ["version", "minute", "source", "alias", "process", "count", "errors"]
    list_filter = ["source"]
    date_hierarchy = "minute"

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(UsageBucket)
class UsageBucketAdmin(admin.ModelAdmin):
    list_display = ["version", "minute", "user", "token", "process", "requests", "prompt_tokens", "completion_tokens"]
    list_select_related = ["version__model", "user", "token"]
    date_hierarchy = "minute"

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False
