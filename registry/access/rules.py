"""The one place that decides who may do what to a model.

`model_permits(user, model, action)` answers for browser pages, the REST API, the
prediction gateway and the services alike. Three things combine:

- the caller's role on the model: the owner field, roles granted to the user or to one of
  their groups, and what the model's visibility gives every signed-in user;
- promote rights (`ModelRole.can_promote`) for moving protected aliases;
- when the caller came with an API token: its scopes and its optional model list.

A model the caller has no role on (or that their token does not cover) does not exist
for them: lookups answer 404, never 403, so its name is not leaked.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet

from core.errors import NotFound, PermissionDenied
from registry.access.actions import OWNER, PREDICTOR, ROLE_ACTIONS, VIEWER, WRITE_ACTIONS, Action
from registry.access.grants import grant_of
from registry.access.scopes import SCOPE_OF
from registry.audit import audit_denied
from registry.models import ModelFormat, RegisteredModel, Visibility
from registry.roles import ModelRole

logger = logging.getLogger(__name__)


def _is_admin(user: Any) -> bool:
    return bool(user.is_active and (user.is_staff or user.is_superuser))


def role_actions(user: Any, model: RegisteredModel) -> frozenset[Action]:
    """Everything the user's roles allow on the model, ignoring any token (one query).

    Without a sign-in, a publicly predictable model allows what a predictor may do (the
    REST API and the pages still ask for a sign-in; /v2 answers such callers).
    """
    if not user.is_authenticated or not user.is_active:
        return PREDICTOR if model.visibility == Visibility.PUBLIC and not user.is_authenticated else frozenset()
    if _is_admin(user) or model.owner_id == user.pk:
        return OWNER

    actions: set[Action] = set()
    if model.visibility == Visibility.INTERNAL:
        actions |= VIEWER
    elif model.visibility == Visibility.PUBLIC:
        actions |= PREDICTOR
    grants = ModelRole.objects.filter(model_id=model.pk).filter(Q(user=user) | Q(group__user=user))
    for role, can_promote in grants.values_list("role", "can_promote"):
        actions |= ROLE_ACTIONS[role]
        if can_promote:
            actions.add(Action.PROMOTE)
    return frozenset(actions)


def actions_permitted(user: Any, model: RegisteredModel) -> frozenset[Action]:
    """What the caller may do to the model, their token's scopes and model list applied."""
    actions = role_actions(user, model)
    grant = grant_of(user)
    if grant is None:
        return actions
    return frozenset(action for action in actions if grant.allows(model.pk, action))


def model_permits(user: Any, model: RegisteredModel, action: Action | str) -> bool:
    """Whether the caller may do `action` to the model (the function every interface asks)."""
    return Action(action) in actions_permitted(user, model)


def model_is_visible(user: Any, model: RegisteredModel) -> bool:
    """Whether the model exists for the caller: some role on it, and covered by their token."""
    grant = grant_of(user)
    return bool(role_actions(user, model)) and (grant is None or grant.covers(model.pk))


def model_require(user: Any, model: RegisteredModel, action: Action | str) -> None:
    """Raise NotFound (model hidden) or PermissionDenied unless the caller may do `action`.

    Refusals of writes are written to the audit trail.
    """
    action = Action(action)
    roles = role_actions(user, model)
    grant = grant_of(user)
    if not roles or (grant is not None and not grant.covers(model.pk)):
        _denied(user, model, action, "model not visible")
        raise NotFound(f"Model {model.name!r} not found.")
    if action not in roles:
        _denied(user, model, action, "role")
        raise PermissionDenied(
            f"You may view model {model.name!r} but not change it this way ({action.value.replace('_', ' ')}); "
            f"ask its owner ({model.owner}) for a role that allows it."
        )
    # Seeing a model needs no scope here: each interface checks its own read scope (a
    # predict-only token may still resolve the model it predicts with).
    if grant is not None and action != Action.VIEW and SCOPE_OF[action] not in grant.scopes:
        _denied(user, model, action, f"token lacks scope {SCOPE_OF[action]}")
        raise PermissionDenied(
            f"Your API token lacks the {SCOPE_OF[action]!r} scope needed to {action.value.replace('_', ' ')}."
        )


def _denied(user: Any, model: RegisteredModel | None, action: Action, reason: str) -> None:
    if action not in WRITE_ACTIONS:
        return
    audit_denied(user, model, action.value, reason)


def models_visible_to(user: Any) -> QuerySet[RegisteredModel]:
    """Models the caller may see (subqueries, no joins: no duplicates)."""
    if not user.is_authenticated or not user.is_active:
        return RegisteredModel.objects.none()
    queryset = RegisteredModel.objects.all()
    if not _is_admin(user):
        held = ModelRole.objects.filter(Q(user=user) | Q(group__user=user)).values("model_id")
        queryset = queryset.filter(
            Q(owner=user) | Q(visibility__in=[Visibility.INTERNAL, Visibility.PUBLIC]) | Q(pk__in=held)
        )
    grant = grant_of(user)
    if grant is not None and grant.model_ids is not None:
        queryset = queryset.filter(pk__in=grant.model_ids)
    return queryset


def can_override_gate(user: Any, model: RegisteredModel) -> bool:
    """Whether the user may promote past a failed evaluation gate (owners and staff)."""
    return model_permits(user, model, Action.OVERRIDE_GATE)


# Formats whose files carry code that a worker runs (TorchScript's code/, torch.export's
# graph with custom ops). A Hugging Face archive carries none: pickle weights and auto_map
# (trust_remote_code) are refused, so only the installed transformers' own code runs. An ONNX
# graph is data run by ONNX Runtime's own operators (custom-op libraries are never loaded).
CODE_FORMATS = {ModelFormat.TORCHSCRIPT: "TorchScript", ModelFormat.EXPORTED_PROGRAM: "torch.export"}
UPLOAD_POLICY_WHO = {
    "maintainers": "anyone who may upload versions of the model (maintainers and owners)",
    "owners": "the model's owners and administrators",
    "admins": "administrators only",
}


def upload_policy_text() -> str:
    """Who may upload code-bearing formats under MODEL_UPLOAD_POLICY, in words."""
    return UPLOAD_POLICY_WHO[settings.MODEL_UPLOAD_POLICY]


def code_upload_permitted(user: Any, model: RegisteredModel) -> bool:
    """Whether MODEL_UPLOAD_POLICY lets the user upload TorchScript or torch.export files to the model
    (the user's right to upload at all is model_require's question)."""
    policy = settings.MODEL_UPLOAD_POLICY
    if policy == "admins":
        return _is_admin(user)
    if policy == "owners":
        return Action.MANAGE in role_actions(user, model)
    return True


def code_upload_require(user: Any, model: RegisteredModel, format: str) -> None:
    """PermissionDenied (audited) naming MODEL_UPLOAD_POLICY when the user may not upload this format."""
    if format not in CODE_FORMATS or code_upload_permitted(user, model):
        return
    policy = settings.MODEL_UPLOAD_POLICY
    _denied(user, model, Action.UPLOAD, f"MODEL_UPLOAD_POLICY={policy} ({format})")
    raise PermissionDenied(
        f"{CODE_FORMATS[ModelFormat(format)]} files carry code that the portal runs; "
        f"under MODEL_UPLOAD_POLICY={policy!r} "
        f"only {upload_policy_text()} may upload them. Hugging Face archives and ONNX models (which carry no code) "
        "are open to every maintainer."
    )
