"""Serializers of the monitoring API: explicit fields, read-only state."""

from __future__ import annotations

from rest_framework import serializers

from monitoring.models import EvaluationDataset, EvaluationRun, GateMetric, PromotionGate


class DatasetSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)

    class Meta:
        model = EvaluationDataset
        fields = ["id", "model", "name", "description", "task", "source_format", "filename", "rows", "size_bytes",
                  "num_classes", "created_by", "created_at"]  # fmt: skip
        read_only_fields = fields


class DatasetCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    file = serializers.FileField(
        help_text=".npz (input arrays + labels/targets), CSV (features + label/target; text + label for text "
        'classifiers) or JSON lines ({"text": ..., "label": ...} per line, text classifiers).'
    )
    version = serializers.IntegerField(
        required=False, min_value=1, help_text="Check against this version (default: production)."
    )


class RunSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name", read_only=True)
    version = serializers.IntegerField(source="version.version", read_only=True)
    dataset = serializers.CharField(source="dataset.name", read_only=True)
    progress = serializers.FloatField(read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)

    class Meta:
        model = EvaluationRun
        fields = [
            "id",
            "model",
            "version",
            "dataset",
            "status",
            "error",
            "progress",
            "rows_done",
            "total_rows",
            "batch_size",
            "attempts",
            "metrics",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class RunCreateSerializer(serializers.Serializer):
    model = serializers.CharField()
    version = serializers.IntegerField(min_value=1)
    dataset = serializers.CharField(help_text="Dataset name (or id) of the model.")
    batch_size = serializers.IntegerField(required=False, min_value=1, max_value=65_536)


class GateSerializer(serializers.ModelSerializer):
    dataset = serializers.CharField(source="dataset.name")

    class Meta:
        model = PromotionGate
        fields = ["enabled", "alias", "dataset", "metric", "tolerance", "min_value", "max_p95_ms", "updated_at"]
        read_only_fields = ["updated_at"]


class GateSetSerializer(serializers.Serializer):
    dataset = serializers.CharField()
    metric = serializers.ChoiceField(choices=GateMetric.choices, default=GateMetric.ACCURACY)
    tolerance = serializers.FloatField(default=0.0, min_value=0.0)
    min_value = serializers.FloatField(required=False, allow_null=True, default=None)
    max_p95_ms = serializers.FloatField(required=False, allow_null=True, default=None)
    alias = serializers.CharField(default="production")
    enabled = serializers.BooleanField(default=True)
