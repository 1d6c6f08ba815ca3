"""Aliases: point a name at a ready version, move it, delete it, roll it back."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from core.errors import Conflict, NotFound
from registry import hooks
from registry.audit import audit_record
from registry.models import AuditEvent, ModelAlias, RegisteredModel, VersionStatus
from registry.selectors import alias_get
from registry.services.access import alias_move_authorize
from registry.services.models import alias_name_check


def alias_set(
    *,
    actor: Any,
    model: RegisteredModel,
    name: str,
    version_number: int,
    action: str = "alias.move",
    approved: bool = False,
    force: bool = False,
) -> ModelAlias:
    """Point an alias at a ready version (creating the alias if needed), in one transaction.

    Protected aliases need promote rights, and an approved request where the model asks
    for one (`approved`: called by registry.services.access on approval). A model's
    promotion checks (registry.hooks; monitoring's gate) may then refuse the move; `force` overrides it for a user
    with that right, and the override is audited.
    """
    alias_name_check(name)
    alias_move_authorize(actor, model, [name], approved=approved)
    promotion = hooks.Promotion(actor=actor, model=model, alias=name, version_number=version_number, force=force,
                                action=action)  # fmt: skip
    override_recorders = hooks.promotion_checks_run(promotion)
    with transaction.atomic():
        # Lock the model row: moves of one model's aliases are serialised, so the
        # "previous holder" written to the audit trail is always the real one.
        locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
        version = locked.versions.filter(version=version_number).first()
        if version is None:
            raise NotFound(f"Model {model.name!r} has no version {version_number}.", field="version")
        if version.status != VersionStatus.READY:
            raise Conflict(
                f"Version {version_number} is {version.status}; only ready versions can hold an alias.",
                field="version",
            )
        alias = ModelAlias.objects.select_related("version").filter(model=locked, name=name).first()
        previous = alias.version.version if alias else None
        if alias is None:
            alias = ModelAlias.objects.create(model=locked, name=name, version=version, updated_by=actor)
        elif previous != version_number:
            alias.version = version
            alias.updated_by = actor
            alias.save(update_fields=["version", "updated_by", "updated_at"])
        if previous != version_number:
            audit_record(
                actor,
                action,
                model=locked,
                object_type="alias",
                object_repr=name,
                before={"version": previous},
                after={"version": version_number},
            )
            for record_override in override_recorders:
                record_override(locked)
    return alias


def alias_delete(*, actor: Any, model: RegisteredModel, name: str) -> None:
    """Remove an alias from a model."""
    alias_move_authorize(actor, model, [name], approved=True)
    with transaction.atomic():
        RegisteredModel.objects.select_for_update().get(pk=model.pk)
        alias = alias_get(model, name)
        audit_record(
            actor,
            "alias.delete",
            model=model,
            object_type="alias",
            object_repr=name,
            before={"version": alias.version.version},
            after={"version": None},
        )
        alias.delete()


def alias_previous_version(model: RegisteredModel, name: str) -> int | None:
    """The version that held the alias before its current holder, from the audit trail."""
    current = model.aliases.filter(name=name).values_list("version__version", flat=True).first()
    if current is None:
        return None
    event = (
        AuditEvent.objects.filter(model=model, object_type="alias", object_repr=name, after__version=current)
        .order_by("-created_at", "-id")
        .first()
    )
    return event.before.get("version") if event and event.before else None


def alias_rollback(*, actor: Any, model: RegisteredModel, name: str) -> ModelAlias:
    """Move the alias back to the version it pointed at before its last move."""
    alias_get(model, name)
    previous = alias_previous_version(model, name)
    if previous is None:
        raise Conflict(f"Alias {name!r} has no previous version to roll back to.")
    target = model.versions.filter(version=previous).first()
    if target is None or target.status != VersionStatus.READY:
        state = target.status if target else "deleted"
        raise Conflict(f"Cannot roll back {name!r} to version {previous}: that version is {state}.")
    return alias_set(actor=actor, model=model, name=name, version_number=previous, action="alias.rollback")
