"""Serializers of the jobs API: shapes of requests and responses, no rules."""

from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from inference.jobs import MAX_CHUNK_SIZE
from inference.models import BatchJob, DataFormat, JobStatus


class BatchJobSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_name", read_only=True)
    version = serializers.IntegerField(source="version_number", read_only=True)
    # A plain string: one enum component (result_format) per choice set keeps the schema unambiguous.
    input_format = serializers.CharField(read_only=True, help_text="Format of the submitted file: npz or jsonl.")
    progress = serializers.FloatField(read_only=True, help_text="Percentage of rows done, 0 to 100.")
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)
    url = serializers.SerializerMethodField(help_text="The job's page in the browser.")
    result_url = serializers.SerializerMethodField(help_text="Download of the result, once the job has succeeded.")

    class Meta:
        model = BatchJob
        fields = [
            "id",
            "model",
            "version",
            "status",
            "progress",
            "rows_done",
            "total_rows",
            "chunk_size",
            "input_format",
            "result_format",
            "input_filename",
            "cancel_requested",
            "attempts",
            "error",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "url",
            "result_url",
        ]
        read_only_fields = fields

    def get_url(self, obj: BatchJob) -> str:
        return reverse("inference:job-detail", args=[obj.pk])

    def get_result_url(self, obj: BatchJob) -> str | None:
        return reverse("api:job-result", args=[obj.pk]) if obj.status == JobStatus.SUCCEEDED else None


class BatchJobCreateSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=64, help_text="Model name.")
    version = serializers.IntegerField(required=False, min_value=1, help_text="Version number (or give an alias).")
    alias = serializers.CharField(required=False, max_length=32, help_text="Alias; default: production.")
    file = serializers.FileField(
        allow_empty_file=True,
        help_text=".npz with one array per input (rows first), or JSON lines: one object "
        '{"<input name>": nested list} per example, without the batch dimension. A text-generation model '
        'takes JSON lines of {"prompt": "..."} or {"messages": [{"role", "content"}, ...]}, each with optional '
        "max_tokens, temperature, top_p, top_k, seed and stop; its result is one JSON line per prompt.",
    )
    result_format = serializers.ChoiceField(
        choices=DataFormat.choices, required=False, help_text="Default: the input's format."
    )
    chunk_size = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_CHUNK_SIZE,
        help_text="Rows per forward pass; default: the version's max_batch_size (text generation: rows per "
        "progress update, default GENERATION_MAX_SEQUENCES).",
    )
    max_tokens = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="Text generation: max_tokens of the lines that do not set it; default: the version's.",
    )
    temperature = serializers.FloatField(
        required=False,
        min_value=0.0,
        max_value=2.0,
        help_text="Text generation: temperature of the lines that do not set it (0 = greedy); default: 1.",
    )
