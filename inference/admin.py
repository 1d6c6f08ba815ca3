"""Admin pages of batch jobs: read-only rows; cancel and delete go through the services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from core.errors import PortalError
from inference import jobs
from inference.models import BatchJob, ConversionRun


@admin.register(BatchJob)
class BatchJobAdmin(admin.ModelAdmin):
    list_display = [
        "short_id",
        "model_name",
        "version_number",
        "status",
        "progress_percent",
        "total_rows",
        "result_format",
        "attempts",
        "created_by",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "input_format", "result_format", "cancel_requested", "created_at"]
    search_fields = ["id", "model_name", "created_by__username", "input_filename", "error"]
    list_select_related = ["created_by"]
    date_hierarchy = "created_at"
    # State belongs to the worker and the services; the admin only shows it.
    readonly_fields = [
        "id",
        "version",
        "model_name",
        "version_number",
        "created_by",
        "status",
        "error",
        "input_format",
        "result_format",
        "input_filename",
        "input_path",
        "result_path",
        "total_rows",
        "rows_done",
        "rows_saved",
        "parts",
        "chunk_size",
        "attempts",
        "worker",
        "cancel_requested",
        "created_at",
        "started_at",
        "heartbeat_at",
        "finished_at",
    ]
    actions = ["cancel_jobs"]

    @admin.display(description="progress")
    def progress_percent(self, obj: BatchJob) -> str:
        return f"{obj.progress:.1f}%"

    def _each(self, request: HttpRequest, queryset: QuerySet[BatchJob], operation: Callable[..., Any]) -> None:
        """Apply a service to each job; a refusal (a running job, say) is a warning, not an error page."""
        for job in queryset:
            try:
                operation(actor=request.user, job=job)
            except PortalError as exc:
                self.message_user(request, exc.message, messages.WARNING)

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[BatchJob]) -> None:
        self._each(request, queryset, jobs.job_cancel)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: BatchJob) -> None:
        jobs.job_delete(actor=request.user, job=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[BatchJob]) -> None:
        self._each(request, queryset, jobs.job_delete)


@admin.register(ConversionRun)
class ConversionRunAdmin(admin.ModelAdmin):
    """Conversions, read-only: they are started and cancelled through the services."""

    list_display = ["short_id", "model_name", "version_number", "target", "status", "attempts", "child",
                    "created_by", "created_at", "finished_at"]  # fmt: skip
    list_filter = ["status", "target", "created_at"]
    search_fields = ["id", "model_name", "created_by__username", "error"]
    list_select_related = ["created_by", "child"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
