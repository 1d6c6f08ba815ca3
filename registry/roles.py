"""Who may do what to a model: per-model roles, protected aliases and promotion requests.

The rows live here; the rules that read them live in registry.access.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q


class Role(models.TextChoices):
    VIEWER = "viewer", "viewer (see)"
    PREDICTOR = "predictor", "predictor (see, call predictions)"
    MAINTAINER = "maintainer", "maintainer (upload, evaluate, move unprotected aliases)"
    OWNER = "owner", "owner (everything, manage roles, delete)"


class ModelRole(models.Model):
    """A role on one model, granted to a user or to a group (exactly one of the two)."""

    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.CASCADE, related_name="roles")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="model_roles"
    )
    group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="model_roles")
    role = models.CharField(max_length=16, choices=Role.choices)
    # Promote rights: may move this model's protected aliases without being an owner.
    can_promote = models.BooleanField(default=False)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "role", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, group__isnull=True) | Q(user__isnull=True, group__isnull=False),
                name="role_for_user_xor_group",
            ),
            models.UniqueConstraint(fields=["model", "user"], name="one_role_per_user_and_model"),
            models.UniqueConstraint(fields=["model", "group"], name="one_role_per_group_and_model"),
        ]

    def __str__(self) -> str:
        who = f"user {self.user}" if self.user_id else f"group {self.group}"
        return f"{who}: {self.role} of {self.model}"


class ProtectedAlias(models.Model):
    """An alias name an owner marked protected (production always is), optionally needing approval."""

    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.CASCADE, related_name="protected_aliases")
    name = models.CharField(max_length=32)
    # A move must be requested by one person and approved by another.
    require_approval = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "name"]
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="unique_protected_alias")]
        verbose_name_plural = "protected aliases"

    def __str__(self) -> str:
        return f"{self.model}@{self.name} (protected{', approval' if self.require_approval else ''})"


class RequestStatus(models.TextChoices):
    PENDING = "pending", "pending"
    APPROVED = "approved", "approved"
    REJECTED = "rejected", "rejected"


class PromotionRequest(models.Model):
    """A request to move a protected alias, waiting for a second person's decision."""

    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.CASCADE, related_name="promotion_requests")
    alias = models.CharField(max_length=32)
    version = models.ForeignKey("registry.ModelVersion", on_delete=models.CASCADE, related_name="+")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    comment = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=RequestStatus.choices, default=RequestStatus.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decision_comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.model}@{self.alias} → v{self.version.version} ({self.status})"
