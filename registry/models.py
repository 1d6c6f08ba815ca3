"""Registered models, their versions, aliases and the audit trail."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from registry.text_tasks import TextTask

# Names appear in URLs (/v2/models/{name}); keep them URL-safe and unambiguous.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Alias names may not be all digits, so that "3" always means version 3.
ALIAS_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# A tag is a word or key=value (team=search): letters, digits and . _ : - around at most one '='.
TAG_RE = re.compile(r"^(?=.{1,50}$)[A-Za-z0-9][A-Za-z0-9_.:-]*(=[A-Za-z0-9_.:-]+)?$")

PRODUCTION_ALIAS = "production"

model_name_validator = RegexValidator(
    MODEL_NAME_RE,
    "A model name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
)


class Tag(models.Model):
    """A free-form label shared by models and versions."""

    name = models.CharField(max_length=50, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Visibility(models.TextChoices):
    PRIVATE = "private", "private (people with a role, and staff)"
    INTERNAL = "internal", "internal (every signed-in user may see it)"
    PUBLIC = "public", "public (every signed-in user may see it; anyone may call its /v2 predictions)"


class RegisteredModel(models.Model):
    """A named model; its versions hold the artifacts."""

    name = models.CharField(max_length=64, unique=True, validators=[model_name_validator])
    description = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="registered_models")
    visibility = models.CharField(max_length=16, choices=Visibility.choices, default=Visibility.PRIVATE)
    tags = models.ManyToManyField(Tag, blank=True, related_name="models")
    # Workers listening on this queue serve the model: "inference" (all GPU workers) unless
    # a deployment dedicates workers to it.
    serving_queue = models.CharField(
        max_length=64, default="inference", validators=[RegexValidator(r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
    )
    # Highest version number handed out so far; bumped under a row lock so that
    # concurrent uploads get distinct numbers and a deleted number is never reused.
    last_version_number = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelFormat(models.TextChoices):
    TORCHSCRIPT = "torchscript", "TorchScript (torch.jit.save)"
    EXPORTED_PROGRAM = "exported_program", "torch.export (.pt2)"
    HUGGINGFACE = "huggingface", "Hugging Face (save_pretrained directory as .zip or .tar.gz)"
    ONNX = "onnx", "ONNX (.onnx, or a .zip / .tar.gz with its external data)"


class VersionStatus(models.TextChoices):
    PENDING = "pending", "pending"
    VALIDATING = "validating", "validating"
    READY = "ready", "ready"
    FAILED = "failed", "failed"
    ARCHIVED = "archived", "archived"


class ModelVersion(models.Model):
    """One uploaded artifact of a model, numbered 1, 2, 3… within the model."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    description = models.TextField(blank=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="versions")
    format = models.CharField(max_length=32, choices=ModelFormat.choices)
    # The text task of a huggingface version (registry.text_tasks.TextTask); "" for tensor formats.
    task = models.CharField(max_length=32, blank=True, default="", choices=TextTask.choices)
    artifact = models.CharField(max_length=500, help_text="Path in the artifact storage.")
    original_filename = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    # {"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}; -1 marks a variable dim.
    signature = models.JSONField(default=dict)
    signature_source = models.CharField(max_length=16, default="declared")
    example_input = models.JSONField(null=True, blank=True)
    labels = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=16, choices=VersionStatus.choices, default=VersionStatus.PENDING)
    status_reason = models.TextField(blank=True)
    # parameter_count, load_seconds, latency_ms (p50/mean over runs), device, torch_version…
    validation = models.JSONField(default=dict, blank=True)
    validation_attempts = models.PositiveSmallIntegerField(default=0, editable=False)
    validation_started_at = models.DateTimeField(null=True, blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    # Dynamic batching: concurrent requests are stacked into one forward of at most this many rows.
    max_batch_size = models.PositiveIntegerField(default=32)
    # How long the gateway may hold a request to fill a batch (0: send what is there now).
    max_batch_delay_ms = models.PositiveIntegerField(default=0)
    # Text generation: max_tokens when a request leaves it out, and the most one may ask for
    # (empty: GENERATION_MAX_TOKENS_DEFAULT / GENERATION_MAX_TOKENS_LIMIT; both within the context).
    max_tokens_default = models.PositiveIntegerField(null=True, blank=True)
    max_tokens_limit = models.PositiveIntegerField(null=True, blank=True)
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="derived",
        help_text="The version this one was converted or quantized from.",
    )
    # How it came from its parent ("quantized to int8", "converted to ONNX"); "" when not recorded.
    derivation = models.CharField(max_length=200, blank=True)
    # Where the artifact came from, given at upload: {"run_url", "git_commit", "dataset", "run_id", …}
    # as strings (registry.sources checks them; *_url values are http(s) links).
    source = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "-version"]
        constraints = [models.UniqueConstraint(fields=["model", "version"], name="unique_version_per_model")]
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"

    @property
    def is_ready(self) -> bool:
        return self.status == VersionStatus.READY

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return list(self.signature.get("inputs", []))

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return list(self.signature.get("outputs", []))


class ModelAlias(models.Model):
    """A movable name (production, staging, …) pointing at one ready version of a model."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=32)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="aliases")
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "name"]
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="unique_alias_per_model")]
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name} → v{self.version.version}"


class AuditEvent(models.Model):
    """An append-only record of a change: who did what to which object, before and after.

    Names are copied into the row so that the trail outlives the objects it mentions.
    """

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    model = models.ForeignKey(
        RegisteredModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    model_name = models.CharField(max_length=64, blank=True, db_index=True)
    object_type = models.CharField(max_length=32)
    object_repr = models.CharField(max_length=200)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    # The X-Request-ID of the request that made the change ("" for workers and commands).
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.object_repr}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Append-only: a row is written once. Deleting a model or user nulls the links
        # (ON DELETE SET NULL in the database), which never passes through here.
        if self.pk is not None and not kwargs.get("force_insert"):
            raise ValueError("Audit events are append-only; they cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ValueError("Audit events are append-only; they cannot be deleted.")


# The access-control and idempotency rows belong to this app (their migrations are registry's).
from registry.idempotency import IdempotencyKey  # noqa: E402, F401
from registry.roles import ModelRole, PromotionRequest, ProtectedAlias  # noqa: E402, F401
