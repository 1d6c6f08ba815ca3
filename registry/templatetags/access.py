"""The model page's access-control section: audit trail, roles, pending promotion requests."""

from __future__ import annotations

from typing import Any

from django import template

from registry import access, services
from registry.access import Action
from registry.models import AuditEvent, RegisteredModel, VersionStatus
from registry.roles import RequestStatus, Role

register = template.Library()


@register.inclusion_tag("registry/_access.html", takes_context=True)
def model_access(context: dict[str, Any], model: RegisteredModel) -> dict[str, Any]:
    """Audit events of the model (newest 50), its roles and pending requests, for one who may see it."""
    user = context["request"].user
    pending = model.promotion_requests.filter(status=RequestStatus.PENDING).select_related("version", "requested_by")
    ready = model.versions.filter(status=VersionStatus.READY).order_by("-version").values_list("version", flat=True)
    return {
        "model": model,
        "events": AuditEvent.objects.filter(model=model).order_by("-created_at", "-id")[:50],
        "roles": services.roles_of(model),
        "pending": pending,
        "can_manage": access.model_permits(user, model, Action.MANAGE),
        "can_promote": access.model_permits(user, model, Action.PROMOTE),
        "roles_choices": Role.values,
        "ready_versions": ready,
        "user": user,
        "csrf_token": context.get("csrf_token"),
    }


def _shown(key: str, value: Any) -> str:
    if value is None or value == "" or value == []:
        return "—"
    if key == "version" and isinstance(value, int):
        return f"v{value}"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


@register.filter
def audit_change(event: AuditEvent) -> str:
    """What an audit event changed, one `field: before → after` per changed field ("version: v1 → v2")."""
    before = event.before if isinstance(event.before, dict) else {}
    after = event.after if isinstance(event.after, dict) else {}
    parts = []
    for key in [*before, *(k for k in after if k not in before)]:
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key not in before:
            parts.append(f"{key}: {_shown(key, new)}")
        elif key not in after:
            parts.append(f"{key}: {_shown(key, old)} removed")
        else:
            parts.append(f"{key}: {_shown(key, old)} → {_shown(key, new)}")
    return "; ".join(parts)
