"""Which changes make the prediction gateways drop their caches (core.invalidation publishes).

Tokens, models, versions and aliases: published once the change commits. A user
deactivated (or otherwise changed), a change of group membership and a role granted,
changed or removed (to a user or a group): published and confirmed by every gateway
before the request that made it returns, as a token revocation is, so the change holds
on /v2 at once.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import m2m_changed, post_delete, post_save

from accounts.models import ApiToken
from core.invalidation import serving_invalidate, serving_invalidate_confirmed_on_commit
from registry.models import ModelAlias, ModelRole, ModelVersion, RegisteredModel


def _on_change(sender: type, instance: Any, **kwargs: Any) -> None:
    serving_invalidate(f"{sender.__name__}:{instance.pk}")


def _on_user_change(sender: type, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    # A sign-in only stamps last_login: nothing a gateway caches.
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return
    serving_invalidate_confirmed_on_commit(f"User:{instance.pk}")


def _on_role_change(sender: type, instance: Any, **kwargs: Any) -> None:
    serving_invalidate_confirmed_on_commit(f"ModelRole:{instance.pk}")


def _on_membership_change(sender: type, instance: Any, action: str, **kwargs: Any) -> None:
    if action in ("post_add", "post_remove", "post_clear"):
        serving_invalidate_confirmed_on_commit(f"Membership:{type(instance).__name__}:{instance.pk}")


def connect() -> None:
    for model in (ApiToken, RegisteredModel, ModelVersion, ModelAlias):
        post_save.connect(_on_change, sender=model, dispatch_uid=f"invalidate-{model.__name__}")
        post_delete.connect(_on_change, sender=model, dispatch_uid=f"invalidate-delete-{model.__name__}")
    post_save.connect(_on_role_change, sender=ModelRole, dispatch_uid="invalidate-ModelRole")
    post_delete.connect(_on_role_change, sender=ModelRole, dispatch_uid="invalidate-delete-ModelRole")
    user_model = get_user_model()
    post_save.connect(_on_user_change, sender=user_model, dispatch_uid="invalidate-user")
    post_delete.connect(_on_user_change, sender=user_model, dispatch_uid="invalidate-delete-user")
    m2m_changed.connect(_on_membership_change, sender=user_model.groups.through, dispatch_uid="invalidate-groups")


connect()
