"""Admin pages of the registry. Audit events are read-only: the trail is append-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from registry.models import AuditEvent, ModelAlias, ModelVersion, RegisteredModel, Tag
from registry.roles import ModelRole, PromotionRequest, ProtectedAlias


class AliasInline(admin.TabularInline):
    model = ModelAlias
    extra = 0
    fields = ["name", "version", "updated_by", "updated_at"]
    readonly_fields = ["name", "version", "updated_by", "updated_at"]
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "visibility", "last_version_number", "created_at", "updated_at"]
    list_filter = ["visibility", "tags", "created_at"]
    search_fields = ["name", "description", "owner__username"]
    readonly_fields = ["last_version_number", "created_at", "updated_at"]
    autocomplete_fields = ["owner"]
    filter_horizontal = ["tags"]
    inlines = [AliasInline]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = [
        "model", "version", "status", "format", "task", "size_bytes", "created_by", "created_at", "validated_at"
    ]  # fmt: skip
    list_filter = ["status", "format", "task", "created_at"]
    search_fields = ["model__name", "description", "sha256"]
    list_select_related = ["model", "created_by"]
    # The artifact, its hash and the signature are what validation checked, and the lineage and
    # source are recorded at upload (checked by registry.sources there): not editable.
    readonly_fields = [
        "model",
        "version",
        "format",
        "task",
        "artifact",
        "original_filename",
        "sha256",
        "size_bytes",
        "signature",
        "signature_source",
        "example_input",
        "status",
        "status_reason",
        "validation",
        "validation_attempts",
        "validation_started_at",
        "validated_at",
        "parent",
        "derivation",
        "source",
        "created_by",
        "created_at",
        "updated_at",
    ]
    filter_horizontal = ["tags"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ModelAlias)
class ModelAliasAdmin(admin.ModelAdmin):
    list_display = ["model", "name", "version", "updated_by", "updated_at"]
    list_filter = ["name"]
    search_fields = ["model__name", "name"]
    list_select_related = ["model", "version", "updated_by"]
    # Alias moves must go through the service (checks + audit); the admin only shows them.
    readonly_fields = ["model", "name", "version", "updated_by", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor_name", "action", "model_name", "object_type", "object_repr"]
    list_filter = ["action", "object_type", "created_at"]
    search_fields = ["actor_name", "model_name", "object_repr", "action", "request_id"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    search_fields = ["name"]


@admin.register(ModelRole)
class ModelRoleAdmin(admin.ModelAdmin):
    """Roles can be granted here too; the gateway drops its caches on every change (signals)."""

    list_display = ["model", "user", "group", "role", "can_promote", "granted_by", "created_at"]
    list_filter = ["role", "can_promote"]
    search_fields = ["model__name", "user__username", "group__name"]
    list_select_related = ["model", "user", "group", "granted_by"]
    autocomplete_fields = ["model"]
    readonly_fields = ["granted_by", "created_at"]

    def save_model(self, request: HttpRequest, obj: ModelRole, form: Any, change: bool) -> None:
        obj.granted_by = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)


@admin.register(ProtectedAlias)
class ProtectedAliasAdmin(admin.ModelAdmin):
    list_display = ["model", "name", "require_approval", "created_at"]
    search_fields = ["model__name", "name"]
    autocomplete_fields = ["model"]


@admin.register(PromotionRequest)
class PromotionRequestAdmin(admin.ModelAdmin):
    """Shown, not edited: decisions go through the API so that they move the alias and are audited."""

    list_display = ["model", "alias", "version", "status", "requested_by", "decided_by", "created_at"]
    list_filter = ["status"]
    readonly_fields = [f.name for f in PromotionRequest._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
