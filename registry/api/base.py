"""The base of every REST view under /models/{name}/: the model, looked up for the caller."""

from __future__ import annotations

from typing import Any

from registry import selectors
from registry.access import Action
from registry.models import RegisteredModel


class ModelScopedMixin:
    """Mixed into an APIView or ViewSet whose URL holds the model's `name`.

    `scoped_model(action)` answers 404 for a model the caller may not see and 403 (audited)
    for one they may see but not act on, exactly as every other interface does.
    """

    request: Any
    kwargs: dict[str, Any]

    def scoped_model(self, action: Action | str = Action.VIEW) -> RegisteredModel:
        return selectors.model_get(self.request.user, self.kwargs["name"], action=action)
