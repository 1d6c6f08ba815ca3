"""Access control operations: roles and protected aliases.

Like the other registry services, every change is one transaction with its audit event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import QuerySet

from core.errors import Conflict, InvalidInput, NotFound
from registry import access
from registry.access import Action
from registry.audit import audit_record
from registry.models import PRODUCTION_ALIAS, RegisteredModel
from registry.roles import ModelRole, ProtectedAlias, Role
from registry.services.models import alias_name_check


def _role_snapshot(grant: ModelRole | None) -> dict[str, Any] | None:
    if grant is None:
        return None
    return {"role": grant.role, "can_promote": grant.can_promote}


def role_grant(
    *,
    actor: Any,
    model: RegisteredModel,
    role: str,
    username: str | None = None,
    group: str | None = None,
    can_promote: bool = False,
) -> ModelRole:
    """Give a user or a group a role on the model (replacing the one they had)."""
    access.model_require(actor, model, Action.MANAGE)
    if role not in Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Role.values)}.", field="role")
    if (username is None) == (group is None):
        raise InvalidInput("Give either a username or a group.", field="username")
    target: dict[str, Any]
    if username is not None:
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise InvalidInput(f"No active user {username!r}.", field="username")
        target, who = {"user": user}, f"user {username}"
    else:
        found = Group.objects.filter(name=group).first()
        if found is None:
            raise InvalidInput(f"No group {group!r}.", field="group")
        target, who = {"group": found}, f"group {group}"
    with transaction.atomic():
        RegisteredModel.objects.select_for_update().get(pk=model.pk)
        existing = ModelRole.objects.filter(model=model, **target).first()
        before = _role_snapshot(existing)
        grant, _ = ModelRole.objects.update_or_create(
            model=model, **target, defaults={"role": role, "can_promote": can_promote, "granted_by": actor}
        )
        audit_record(
            actor,
            "role.grant" if existing is None else "role.change",
            model=model,
            object_type="role",
            object_repr=who,
            before=before,
            after=_role_snapshot(grant),
        )
    return grant


def role_revoke(*, actor: Any, model: RegisteredModel, role_id: int) -> None:
    """Remove a role from the model."""
    access.model_require(actor, model, Action.MANAGE)
    with transaction.atomic():
        grant = ModelRole.objects.select_related("user", "group").filter(model=model, pk=role_id).first()
        if grant is None:
            raise NotFound(f"Model {model.name!r} has no role {role_id}.")
        who = f"user {grant.user.username}" if grant.user else f"group {grant.group.name if grant.group else ''}"
        audit_record(
            actor,
            "role.revoke",
            model=model,
            object_type="role",
            object_repr=who,
            before=_role_snapshot(grant),
            after=None,
        )
        grant.delete()


def roles_of(model: RegisteredModel) -> QuerySet[ModelRole]:
    return ModelRole.objects.filter(model=model).select_related("user", "group")


def alias_protection(model: RegisteredModel, name: str) -> tuple[bool, bool]:
    """(protected, needs approval) for an alias name of the model."""
    rule = ProtectedAlias.objects.filter(model=model, name=name).first()
    return (name == PRODUCTION_ALIAS or rule is not None), bool(rule and rule.require_approval)


def alias_protect(
    *, actor: Any, model: RegisteredModel, name: str, protected: bool = True, require_approval: bool = False
) -> ProtectedAlias | None:
    """Mark an alias protected (optionally needing a second person's approval), or unmark it."""
    access.model_require(actor, model, Action.MANAGE)
    alias_name_check(name)
    if not protected and name == PRODUCTION_ALIAS:
        raise InvalidInput("The production alias is always protected.", field="protected")
    with transaction.atomic():
        RegisteredModel.objects.select_for_update().get(pk=model.pk)
        rule = ProtectedAlias.objects.filter(model=model, name=name).first()
        before = {
            "protected": alias_protection(model, name)[0],
            "require_approval": bool(rule and rule.require_approval),
        }
        if protected:
            rule, _ = ProtectedAlias.objects.update_or_create(
                model=model, name=name, defaults={"require_approval": require_approval}
            )
        elif rule is not None:
            rule.delete()
            rule = None
        after = {"protected": protected or name == PRODUCTION_ALIAS, "require_approval": protected and require_approval}
        if before != after:
            audit_record(
                actor, "alias.protect", model=model, object_type="alias", object_repr=name, before=before, after=after
            )
    return rule


def alias_move_authorize(actor: Any, model: RegisteredModel, names: Iterable[str], *, approved: bool = False) -> None:
    """Refuse a move (set, roll back, delete, drop) of aliases the actor may not move.

    A protected alias needs promote rights; one that needs approval moves only through an
    approved promotion request. `actor=None` is the system itself (workers, migrations).
    """
    if actor is None:
        return
    for name in names:
        protected, needs_approval = alias_protection(model, name)
        access.model_require(actor, model, Action.PROMOTE if protected else Action.MOVE_ALIAS)
        if needs_approval and not approved:
            access.audit_denied(actor, model, Action.PROMOTE.value, f"alias {name} needs approval")
            raise Conflict(
                f"Alias {name!r} of model {model.name!r} moves only with a second person's approval: "
                f"request it (POST /api/v1/models/{model.name}/promotion-requests/) and have it approved.",
                field="alias",
            )
