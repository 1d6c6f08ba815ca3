"""The one table of API token scopes: which scope each action needs, on every interface.

The REST API, the /v2 and /v1 prediction gateway and the services all read it, so a new
interface asks `scopes_admitting(action)` rather than deciding again.
"""

from __future__ import annotations

from django.db import models

from registry.access.actions import Action


class Scope(models.TextChoices):
    """What an API token may be used for."""

    READ = "read", "read"
    PREDICT = "predict", "predict"
    WRITE = "write", "write"
    ADMIN = "admin", "admin"


# The token scope each action needs.
SCOPE_OF: dict[Action, Scope] = {
    Action.VIEW: Scope.READ,
    Action.DOWNLOAD: Scope.READ,
    Action.PREDICT: Scope.PREDICT,
    Action.UPLOAD: Scope.WRITE,
    Action.EVALUATE: Scope.WRITE,
    Action.MOVE_ALIAS: Scope.WRITE,
    Action.PROMOTE: Scope.WRITE,
    Action.DELETE: Scope.WRITE,
    Action.OVERRIDE_GATE: Scope.ADMIN,
    Action.MANAGE: Scope.ADMIN,
}


def scopes_admitting(action: Action | str) -> frozenset[Scope]:
    """The scopes any one of which lets a token do `action`.

    Seeing a model (metadata, readiness) is also open to a predict-only token: a client
    resolves the model it predicts with.
    """
    action = Action(action)
    if action == Action.VIEW:
        return frozenset({Scope.READ, Scope.PREDICT})
    return frozenset({SCOPE_OF[action]})


def rest_scope(method: str, required: str | dict[str, str] | None = None) -> Scope:
    """The scope a REST call needs: the view's `required_scope` (per method), else read for reads, write otherwise."""
    if isinstance(required, dict):
        required = required.get(method)
    if required:
        return Scope(required)
    return Scope.READ if method in ("GET", "HEAD", "OPTIONS") else Scope.WRITE
