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
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from django.db.models import Q, QuerySet

from core.errors import NotFound, PermissionDenied
from registry.roles import ModelRole, Role

if TYPE_CHECKING:
    from registry.models import RegisteredModel

logger = logging.getLogger(__name__)


class Action(StrEnum):
    VIEW = "view"  # see the model, versions, aliases, audit trail; v2 metadata and ready
    PREDICT = "predict"  # call predictions (/v2 infer, /predict, batch jobs)
    DOWNLOAD = "download"  # fetch an artifact
    UPLOAD = "upload"  # upload, edit, archive, restore, revalidate versions
    EVALUATE = "evaluate"  # start evaluations
    MOVE_ALIAS = "move_alias"  # set, move, roll back or delete an unprotected alias
    PROMOTE = "promote"  # the same for a protected alias; request and approve such moves
    OVERRIDE_GATE = "override_gate"  # promote past a failed evaluation gate
    DELETE = "delete"  # delete versions or the model
    MANAGE = "manage"  # roles, visibility, description, protected aliases


VIEWER = frozenset({Action.VIEW})
PREDICTOR = VIEWER | {Action.PREDICT}
MAINTAINER = PREDICTOR | {Action.DOWNLOAD, Action.UPLOAD, Action.EVALUATE, Action.MOVE_ALIAS}
OWNER = frozenset(Action)
ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    Role.VIEWER: VIEWER,
    Role.PREDICTOR: PREDICTOR,
    Role.MAINTAINER: MAINTAINER,
    Role.OWNER: OWNER,
}
# The token scope each action needs.
SCOPE_OF: dict[Action, str] = {
    Action.VIEW: "read",
    Action.DOWNLOAD: "read",
    Action.PREDICT: "predict",
    Action.UPLOAD: "write",
    Action.EVALUATE: "write",
    Action.MOVE_ALIAS: "write",
    Action.PROMOTE: "write",
    Action.DELETE: "write",
    Action.OVERRIDE_GATE: "admin",
    Action.MANAGE: "admin",
}
WRITE_ACTIONS = frozenset(OWNER - {Action.VIEW, Action.DOWNLOAD, Action.PREDICT})


@dataclass(frozen=True)
class TokenGrant:
    """What an API token allows, as the caller presented it (no database needed to check)."""

    token_id: int
    scopes: frozenset[str]
    model_ids: frozenset[int] | None  # None: every model the user may use
    rate_limit_per_minute: int | None

    def covers(self, model_id: int) -> bool:
        return self.model_ids is None or model_id in self.model_ids

    def allows(self, model_id: int, action: Action | str) -> bool:
        return self.covers(model_id) and SCOPE_OF[Action(action)] in self.scopes


def grant_of(user: Any) -> TokenGrant | None:
    """The token grant the user authenticated with; None for a browser session (the full user)."""
    return getattr(user, "api_grant", None)


def _is_admin(user: Any) -> bool:
    return bool(user.is_active and (user.is_staff or user.is_superuser))


def role_actions(user: Any, model: RegisteredModel) -> frozenset[Action]:
    """Everything the user's roles allow on the model, ignoring any token (one query).

    Without a sign-in, a publicly predictable model allows what a predictor may do (the
    REST API and the pages still ask for a sign-in; /v2 answers such callers).
    """
    from registry.models import Visibility

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


def audit_denied(user: Any, model: RegisteredModel | None, action: str, reason: str) -> None:
    """Record a refused write (outside any transaction that the refusal rolls back)."""
    from registry.services import audit_record

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


def models_visible_to(user: Any) -> QuerySet[RegisteredModel]:
    """Models the caller may see (subqueries, no joins: no duplicates)."""
    from registry.models import RegisteredModel, Visibility

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
