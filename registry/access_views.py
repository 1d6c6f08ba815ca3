"""Browser forms of a model's access section: grant and revoke roles, request and decide promotions.

Each view is a thin POST that calls registry.services (which checks the caller's
rights and writes the audit trail) and returns to the model page with a message.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from core.errors import InvalidInput, NotFound, PortalError
from registry import selectors, services
from registry.models import RegisteredModel


def _on_model(request: HttpRequest, name: str, act: Callable[[RegisteredModel], str]) -> HttpResponse:
    """Run one access operation on a visible model; its outcome becomes a message on the model page."""
    try:
        model = selectors.model_get(request.user, name)
        messages.success(request, act(model))
    except NotFound as exc:
        raise Http404(exc.message) from None
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect(reverse("registry:model-detail", args=[name]) + "#access")


def _number(raw: str | None, what: str) -> int:
    if not raw or not raw.strip().isdigit():
        raise InvalidInput(f"Choose a {what}.")
    return int(raw)


@login_required
@require_POST
def role_grant(request: HttpRequest, name: str) -> HttpResponse:
    """Give a user or a group a role on the model."""

    def act(model: RegisteredModel) -> str:
        who = request.POST.get("who", "").strip()
        is_group = request.POST.get("kind") == "group"
        grant = services.role_grant(
            actor=request.user, model=model, role=request.POST.get("role", ""),
            username=None if is_group else who, group=who if is_group else None,
            can_promote=request.POST.get("can_promote") == "on",
        )  # fmt: skip
        return f"{'Group' if is_group else 'User'} {who} is now {grant.role} of {model.name}."

    return _on_model(request, name, act)


@login_required
@require_POST
def role_revoke(request: HttpRequest, name: str, role_id: int) -> HttpResponse:
    def act(model: RegisteredModel) -> str:
        services.role_revoke(actor=request.user, model=model, role_id=role_id)
        return "Role removed."

    return _on_model(request, name, act)


@login_required
@require_POST
def promotion_request(request: HttpRequest, name: str) -> HttpResponse:
    """Ask for a protected alias to move; someone else with promote rights decides."""

    def act(model: RegisteredModel) -> str:
        alias = request.POST.get("alias", "").strip().lower()
        number = _number(request.POST.get("version"), "version")
        made = services.promotion_request_create(
            actor=request.user, model=model, alias=alias, version_number=number,
            comment=request.POST.get("comment", ""),
        )  # fmt: skip
        return f"Requested {alias} → v{number} (request #{made.pk}); another person with promote rights decides."

    return _on_model(request, name, act)


@login_required
@require_POST
def promotion_decide(request: HttpRequest, name: str, request_id: int, decision: str) -> HttpResponse:
    if decision not in ("approve", "reject"):
        raise Http404("No such decision.")

    def act(model: RegisteredModel) -> str:
        decided = services.promotion_request_decide(
            actor=request.user, model=model, request_id=request_id, approve=decision == "approve",
            comment=request.POST.get("comment", ""),
        )  # fmt: skip
        return f"Request #{decided.pk} {decided.status}."

    return _on_model(request, name, act)
