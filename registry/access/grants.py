"""What an API token allows, carried on the user it authenticated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry.access.actions import Action
from registry.access.scopes import SCOPE_OF


@dataclass(frozen=True)
class TokenGrant:
    """What an API token allows, as the caller presented it (no database needed to check)."""

    token_id: int
    scopes: frozenset[str]
    model_ids: frozenset[int] | None  # None: every model the user may use
    rate_limit_per_minute: int | None
    tokens_per_minute: int | None = None

    def covers(self, model_id: int) -> bool:
        return self.model_ids is None or model_id in self.model_ids

    def allows(self, model_id: int, action: Action | str) -> bool:
        return self.covers(model_id) and SCOPE_OF[Action(action)] in self.scopes


def grant_of(user: Any) -> TokenGrant | None:
    """The token grant the user authenticated with; None for a browser session (the full user)."""
    return getattr(user, "api_grant", None)
