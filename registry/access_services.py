"""Operations on access control: roles, protected aliases, promotion requests, audit reads.

Like registry.services, every change is one transaction with its audit event.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from registry import access
from registry.access import Action
from registry.models import PRODUCTION_ALIAS, AuditEvent, ModelVersion, RegisteredModel, VersionStatus
from registry.roles import ModelRole, PromotionRequest, ProtectedAlias, RequestStatus, Role

# --- roles --------------------------------------------------------------------------------


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
    from registry.services import audit_record

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
    from registry.services import audit_record

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


# --- protected aliases ----------------------------------------------------------------------


def alias_protection(model: RegisteredModel, name: str) -> tuple[bool, bool]:
    """(protected, needs approval) for an alias name of the model."""
    rule = ProtectedAlias.objects.filter(model=model, name=name).first()
    return (name == PRODUCTION_ALIAS or rule is not None), bool(rule and rule.require_approval)


def alias_protect(
    *, actor: Any, model: RegisteredModel, name: str, protected: bool = True, require_approval: bool = False
) -> ProtectedAlias | None:
    """Mark an alias protected (optionally needing a second person's approval), or unmark it."""
    from registry.services import alias_name_check, audit_record

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


# --- promotion requests ---------------------------------------------------------------------


def promotion_request_create(
    *, actor: Any, model: RegisteredModel, alias: str, version_number: int, comment: str = ""
) -> PromotionRequest:
    """Ask for a protected alias to move to a version; another person approves or rejects."""
    from registry.services import alias_name_check, audit_record

    alias_name_check(alias)
    access.model_require(actor, model, Action.PROMOTE)
    version = ModelVersion.objects.filter(model=model, version=version_number).first()
    if version is None:
        raise NotFound(f"Model {model.name!r} has no version {version_number}.", field="version")
    if version.status != VersionStatus.READY:
        raise Conflict(f"Version {version_number} is {version.status}; only ready versions can hold an alias.")
    with transaction.atomic():
        request = PromotionRequest.objects.create(
            model=model, alias=alias, version=version, requested_by=actor, comment=comment[:2000]
        )
        audit_record(
            actor,
            "promotion.request",
            model=model,
            object_type="promotion_request",
            object_repr=f"#{request.pk} {alias} → v{version_number}",
            after={"request": request.pk, "alias": alias, "version": version_number, "comment": comment[:2000]},
        )
    return request


def promotion_request_decide(
    *, actor: Any, model: RegisteredModel, request_id: int, approve: bool, comment: str = ""
) -> PromotionRequest:
    """Approve (moving the alias) or reject a pending request; never one's own."""
    from registry.services import alias_set, audit_record

    access.model_require(actor, model, Action.PROMOTE)
    with transaction.atomic():
        request = (
            PromotionRequest.objects.select_for_update()
            .select_related("version")
            .filter(model=model, pk=request_id)
            .first()
        )
        if request is None:
            raise NotFound(f"Model {model.name!r} has no promotion request {request_id}.")
        if request.status != RequestStatus.PENDING:
            raise Conflict(f"Promotion request {request_id} is already {request.status}.")
        if request.requested_by_id == actor.pk:
            access.audit_denied(actor, model, "promotion.approve", "self-approval")
            raise PermissionDenied("You cannot decide your own promotion request; another person must.")
        request.status = RequestStatus.APPROVED if approve else RequestStatus.REJECTED
        request.decided_by = actor
        request.decision_comment = comment[:2000]
        request.decided_at = timezone.now()
        request.save(update_fields=["status", "decided_by", "decision_comment", "decided_at"])
        audit_record(
            actor,
            "promotion.approve" if approve else "promotion.reject",
            model=model,
            object_type="promotion_request",
            object_repr=f"#{request.pk} {request.alias} → v{request.version.version}",
            before={"status": RequestStatus.PENDING},
            after={"status": request.status, "comment": comment[:2000]},
        )
        if approve:
            alias_set(
                actor=actor, model=model, name=request.alias, version_number=request.version.version, approved=True
            )
    return request


# --- audit reads ------------------------------------------------------------------------------

EXPORT_FIELDS = [
    "id",
    "created_at",
    "actor",
    "action",
    "model",
    "object_type",
    "object",
    "before",
    "after",
    "request_id",
]


def _export_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_name,
        "action": event.action,
        "model": event.model_name,
        "object_type": event.object_type,
        "object": event.object_repr,
        "before": event.before,
        "after": event.after,
        "request_id": event.request_id,
    }


def audit_export(events: QuerySet[AuditEvent], fmt: str) -> tuple[str, str]:
    """Events as (content, content type) in `csv` or `json`; before/after as JSON in CSV cells."""
    rows = (_export_row(event) for event in events.iterator(chunk_size=500))
    if fmt == "json":
        return json.dumps(list(rows), cls=DjangoJSONEncoder), "application/json"
    if fmt != "csv":
        raise InvalidInput("format must be csv or json.", field="format")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    for row in rows:
        row["before"] = json.dumps(row["before"]) if row["before"] is not None else ""
        row["after"] = json.dumps(row["after"]) if row["after"] is not None else ""
        writer.writerow(row)
    return buffer.getvalue(), "text/csv"


def alias_version_at(model: RegisteredModel, alias: str, when: dt.datetime) -> tuple[int | None, AuditEvent | None]:
    """The version the alias pointed at, at time `when`, from the audit trail (and the event that set it)."""
    event = (
        AuditEvent.objects.filter(model=model, object_type="alias", object_repr=alias, created_at__lte=when)
        .order_by("-created_at", "-id")
        .first()
    )
    if event is None or not event.after:
        return None, event
    return event.after.get("version"), event
