"""Promotion requests: a move of a protected alias that waits for a second person's approval."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from core.errors import Conflict, NotFound, PermissionDenied
from registry import access
from registry.access import Action
from registry.audit import audit_record
from registry.models import ModelVersion, RegisteredModel, VersionStatus
from registry.roles import PromotionRequest, RequestStatus
from registry.services.aliases import alias_set
from registry.services.models import alias_name_check


def promotion_request_create(
    *, actor: Any, model: RegisteredModel, alias: str, version_number: int, comment: str = ""
) -> PromotionRequest:
    """Ask for a protected alias to move to a version; another person approves or rejects."""
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
