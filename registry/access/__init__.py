"""Who may do what to a model: actions, roles, token scopes and the rules that combine them.

Every interface (pages, REST API, prediction gateway, services) asks `model_permits` or
`model_require`; token scopes come from the one table in `registry.access.scopes`.
"""

from __future__ import annotations

from registry.access.actions import MAINTAINER, OWNER, PREDICTOR, ROLE_ACTIONS, VIEWER, WRITE_ACTIONS, Action
from registry.access.grants import TokenGrant, grant_of
from registry.access.rules import (
    CODE_FORMATS,
    actions_permitted,
    can_override_gate,
    code_upload_permitted,
    code_upload_require,
    model_is_visible,
    model_permits,
    model_require,
    models_visible_to,
    role_actions,
    upload_policy_text,
)
from registry.access.scopes import SCOPE_OF, Scope, rest_scope, scopes_admitting
from registry.audit import audit_denied

__all__ = [
    "CODE_FORMATS",
    "MAINTAINER",
    "OWNER",
    "PREDICTOR",
    "ROLE_ACTIONS",
    "SCOPE_OF",
    "VIEWER",
    "WRITE_ACTIONS",
    "Action",
    "Scope",
    "TokenGrant",
    "actions_permitted",
    "audit_denied",
    "can_override_gate",
    "code_upload_permitted",
    "code_upload_require",
    "grant_of",
    "model_is_visible",
    "model_permits",
    "model_require",
    "models_visible_to",
    "rest_scope",
    "role_actions",
    "scopes_admitting",
    "upload_policy_text",
]
