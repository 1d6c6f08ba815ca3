"""Serializers of the registry API: shapes of requests and responses, no rules."""

from __future__ import annotations

from typing import Any, cast

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import empty

from registry import selectors
from registry.audit import EXPORT_FIELDS
from registry.models import AuditEvent, ModelAlias, ModelFormat, ModelVersion, RegisteredModel, Visibility
from registry.text_tasks import TextTask


@extend_schema_field({"type": "array", "items": {"type": "string"}})
class TagsField(serializers.Field):
    """Tags as a JSON list, or a comma-separated string (handy in multipart forms)."""

    def get_value(self, dictionary: Any) -> Any:
        if hasattr(dictionary, "getlist") and self.field_name in dictionary:
            values = dictionary.getlist(self.field_name)
            return values[0] if len(values) == 1 else values
        return dictionary.get(self.field_name, empty)

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, (str, list)):
            raise serializers.ValidationError("Give tags as a list of strings or a comma-separated string.")
        return data

    def to_representation(self, value: Any) -> list[str]:
        return sorted(tag.name for tag in value.all())


class ModelSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    tags = TagsField(required=False)
    aliases = serializers.SerializerMethodField()
    latest_version = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()

    class Meta:
        model = RegisteredModel
        fields = [
            "name",
            "description",
            "owner",
            "visibility",
            "tags",
            "aliases",
            "latest_version",
            "created_at",
            "updated_at",
            "url",
        ]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs: dict[str, dict[str, Any]] = {"name": {"validators": []}}

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "integer"}})
    def get_aliases(self, obj: RegisteredModel) -> dict[str, int]:
        return {alias.name: alias.version.version for alias in obj.aliases.all()}

    def get_latest_version(self, obj: RegisteredModel) -> int | None:
        return obj.last_version_number or None

    def get_url(self, obj: RegisteredModel) -> str:
        return reverse("registry:model-detail", args=[obj.name])


class ModelUpdateSerializer(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True)
    tags = TagsField(required=False)
    visibility = serializers.ChoiceField(choices=Visibility.choices, required=False)


class TensorSpecSerializer(serializers.Serializer):
    name = serializers.CharField()
    datatype = serializers.CharField()
    shape = serializers.ListField(child=serializers.IntegerField())


class SignatureSerializer(serializers.Serializer):
    inputs = TensorSpecSerializer(many=True)
    outputs = TensorSpecSerializer(many=True)


class VersionSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name", read_only=True)
    tags = TagsField(read_only=True)
    signature = SignatureSerializer(read_only=True)
    # "parent" is also Field's attribute for the enclosing serializer; DRF's metaclass keeps them apart.
    parent = serializers.IntegerField(source="parent.version", read_only=True, allow_null=True)  # type: ignore[assignment]
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)
    aliases = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)  # type: ignore[var-annotated]
    # Like "parent", "source" is also a Field attribute; DRF's metaclass keeps them apart.
    source = serializers.DictField(  # type: ignore[assignment]
        child=serializers.CharField(), read_only=True, help_text="Where the artifact came from, given at upload."
    )
    download_url = serializers.SerializerMethodField()
    identical_to = serializers.SerializerMethodField(help_text="Other versions with the same artifact (sha256).")

    class Meta:
        model = ModelVersion
        fields = [
            "model",
            "version",
            "status",
            "status_reason",
            "format",
            "task",
            "sha256",
            "size_bytes",
            "original_filename",
            "max_batch_size",
            "max_batch_delay_ms",
            "max_tokens_default",
            "max_tokens_limit",
            "signature",
            "signature_source",
            "identical_to",
            "labels",
            "description",
            "tags",
            "validation",
            "aliases",
            "parent",
            "derivation",
            "source",
            "created_by",
            "created_at",
            "validated_at",
            "download_url",
        ]
        read_only_fields = fields

    def get_download_url(self, obj: ModelVersion) -> str:
        return reverse("api:version-download", args=[obj.model.name, obj.version])

    def get_identical_to(self, obj: ModelVersion) -> list[int]:
        # One query per model for a whole list of its versions, not one per version.
        index = cast(dict[str, Any], self.context).setdefault("versions_by_sha256", {})
        if obj.model_id not in index:
            index[obj.model_id] = selectors.versions_by_sha256(obj.model_id)
        return [number for number in index[obj.model_id].get(obj.sha256, []) if number != obj.version]


class VersionUploadSerializer(serializers.Serializer):
    file = serializers.FileField(
        allow_empty_file=True,
        help_text="TorchScript (.pt) or torch.export (.pt2) archive, an ONNX model (.onnx, or with its external "
        "data as one .zip or .tar.gz), or a Hugging Face save_pretrained directory as one .zip or .tar.gz.",
    )
    format = serializers.ChoiceField(
        choices=ModelFormat.choices, required=False, help_text="Checked against the file; detected when left out."
    )
    task = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=32,
        help_text=f"Hugging Face models: {', '.join(TextTask.values)} (or the alias embeddings); inferred from "
        "config.json's architectures when left out. The signature, labels and example text follow from the archive.",
    )
    signature = serializers.JSONField(
        binary=True, required=False, help_text='{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}'
    )
    example_input = serializers.JSONField(
        binary=True,
        required=False,
        help_text='{"inputs": [{"name", "datatype", "data"}]}: infers the signature. Hugging Face models: '
        '{"inputs": [{"name": "text", "datatype": "BYTES", "data": ["a sentence"]}]}.',
    )
    labels = serializers.JSONField(binary=True, required=False, help_text="Class names, in output order.")
    description = serializers.CharField(required=False, allow_blank=True, default="")
    tags = TagsField(required=False)
    parent = serializers.IntegerField(  # type: ignore[assignment]
        required=False, min_value=1, help_text="Version this one derives from."
    )
    derivation = serializers.CharField(
        required=False, allow_blank=True, help_text="How it was derived from parent (at most 200 characters)."
    )
    source = serializers.JSONField(  # type: ignore[assignment]
        binary=True,
        required=False,
        help_text='Where the artifact came from: a JSON object of strings, e.g. {"run_url": "https://…", '
        '"git_commit": "3f2a9c1", "dataset": "reviews-v2", "run_id": "42"} plus any key of your own '
        "(at most 32 keys, 1000 characters a value, 8 KB in all; keys named url or *_url must be http(s) URLs).",
    )


class VersionUpdateSerializer(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True)
    tags = TagsField(required=False)
    max_batch_size = serializers.IntegerField(required=False, help_text="Rows stacked into one forward pass (1-4096).")
    max_batch_delay_ms = serializers.IntegerField(
        required=False, help_text="How long the gateway may hold a request to fill a batch (0-1000 ms)."
    )
    max_tokens_default = serializers.IntegerField(
        required=False, help_text="Text generation: max_tokens of a request that leaves it out (at most the limit)."
    )
    max_tokens_limit = serializers.IntegerField(
        required=False, help_text="Text generation: the most max_tokens a request may ask for (within the context)."
    )


class AliasSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.version")
    updated_by = serializers.CharField(source="updated_by.username", read_only=True, allow_null=True)

    class Meta:
        model = ModelAlias
        fields = ["name", "version", "updated_by", "updated_at"]
        read_only_fields = fields


class AliasSetSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)
    force = serializers.BooleanField(
        default=False, help_text="Move past a failing promotion gate (needs the right to override; audited)."
    )


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_name", read_only=True)
    model = serializers.CharField(source="model_name", read_only=True)
    object = serializers.CharField(source="object_repr", read_only=True)
    before = serializers.JSONField(read_only=True)
    after = serializers.JSONField(read_only=True)

    class Meta:
        model = AuditEvent
        # The CSV/JSON export writes the same columns.
        fields = list(EXPORT_FIELDS)
        read_only_fields = fields
