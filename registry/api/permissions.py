"""The REST API's permission class: signed in, with a token scope that fits the request.

Its own module: DRF imports permission classes while rest_framework.views is loading.
"""

from __future__ import annotations

from typing import Any

from rest_framework import permissions
from rest_framework.request import Request

from registry.access import audit_denied, grant_of, rest_scope


class TokenScopePermission(permissions.BasePermission):
    """Signed in, and when by API token, a token with the scope this request needs.

    A view names its scope in `required_scope` (a string, or a dict by HTTP method);
    otherwise reads need `read` and everything else `write`. A browser session has every
    scope: what the user may do is then decided by their roles alone. A refused write
    is written to the audit trail.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        grant = grant_of(request.user)
        if grant is None:
            return True
        scope = self.scope_for(request, view)
        if scope in grant.scopes:
            return True
        if request.method not in permissions.SAFE_METHODS:
            audit_denied(request.user, None, f"{request.method} {request.path}"[:200], f"token lacks scope {scope}")
        self.message = f"Your API token lacks the {scope!r} scope needed for {request.method} {request.path}."
        return False

    @staticmethod
    def scope_for(request: Request, view: Any) -> str:
        return rest_scope(request.method or "GET", getattr(view, "required_scope", None))
