"""The audit trail: one append-only event per change or refused write, its export, and reads of it."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet

from core.errors import InvalidInput
from core.request_id import current_request_id
from registry.access.grants import grant_of
from registry.models import AuditEvent, RegisteredModel


def audit_record(
    actor: Any,
    action: str,
    *,
    model: RegisteredModel | None,
    object_type: str,
    object_repr: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit event (call inside the transaction that makes the change)."""
    return AuditEvent.objects.create(
        actor=actor if actor is not None and actor.pk else None,
        actor_name=getattr(actor, "username", "") or "system",
        action=action,
        model=model,
        model_name=model.name if model else "",
        object_type=object_type,
        object_repr=object_repr[:200],
        before=before,
        after=after,
        request_id=current_request_id(),
    )


def audit_denied(user: Any, model: RegisteredModel | None, action: str, reason: str) -> None:
    """Record a refused write (outside any transaction that the refusal rolls back)."""
    actor = user if getattr(user, "is_authenticated", False) else None
    grant = grant_of(user)
    audit_record(
        actor,
        "authz.denied",
        model=model,
        object_type="model" if model is not None else "request",
        object_repr=model.name if model is not None else action,
        after={"action": action, "reason": reason, **({"token": grant.token_id} if grant else {})},
    )


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
