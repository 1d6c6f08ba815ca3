"""Reads of the registry that check who is asking.

Every lookup of a model goes through here, so a model the caller may not see is
answered exactly like one that does not exist.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from django.db.models import Q, QuerySet

from core.errors import InvalidInput, NotFound
from registry import access
from registry.access import Action
from registry.models import (
    ALIAS_NAME_RE,
    MODEL_NAME_RE,
    PRODUCTION_ALIAS,
    AuditEvent,
    ModelAlias,
    ModelVersion,
    RegisteredModel,
)

# A version number in an address: digits only (no '²', which str.isdigit admits), and small
# enough for the database's integer column.
VERSION_NUMBER_RE = re.compile(r"^[0-9]{1,9}$")


def _is_admin(user: Any) -> bool:
    return bool(user.is_active and (user.is_staff or user.is_superuser))


def models_visible_to(user: Any) -> QuerySet[RegisteredModel]:
    """Models the user may see: any role on them (registry.access decides), or all for staff."""
    return access.models_visible_to(user)


def models_permitting(user: Any, action: Action) -> list[RegisteredModel]:
    """The visible models on which the user may do `action`, by name (a role query per model)."""
    return [model for model in models_visible_to(user).order_by("name") if access.model_permits(user, model, action)]


def model_can_change(user: Any, model: RegisteredModel) -> bool:
    """Whether the user may upload to the model and move its unprotected aliases."""
    return access.model_permits(user, model, Action.UPLOAD)


def address_checked(name: str, version: str | None = None) -> None:
    """A model address from a URL or a body (name, and a version number or an alias) is well-formed, else 400.

    Checked before anything is looked up: what no model, version or alias can be called never
    reaches the database (a NUL there is a 500 on PostgreSQL, a 20-digit version an overflow).
    """
    problem = _address_problem(name, version)
    if problem:
        raise InvalidInput(problem)


@functools.lru_cache(maxsize=1024)
def _address_problem(name: str, version: str | None) -> str:
    """What is wrong with an address ("" when nothing): memoised, the gateway asks on every request."""
    if not MODEL_NAME_RE.fullmatch(name):
        return (
            f"{_shown(name)} is not a model name: 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit."
        )
    if version is not None and not (VERSION_NUMBER_RE.fullmatch(version) or ALIAS_NAME_RE.fullmatch(version)):
        return (
            f"{_shown(version)} is neither a version number (up to 9 digits) nor an alias name (a lowercase letter, "
            "then up to 31 lowercase letters, digits, '_' or '-')."
        )
    return ""


def _shown(value: str) -> str:
    """A refused value as a message quotes it: repr (control characters escaped), cut short."""
    return repr(value[:80] + "…") if len(value) > 80 else repr(value)


def model_get(user: Any, name: str, *, for_change: bool = False, action: Action | str | None = None) -> RegisteredModel:
    """The named model if the user may see it and do `action` to it (`for_change`: upload).

    A model the user may not see is NotFound, exactly like one that does not exist.
    """
    model = RegisteredModel.objects.select_related("owner").filter(name=name).first()
    if model is None:
        raise NotFound(f"Model {name!r} not found.")
    access.model_require(user, model, action or (Action.UPLOAD if for_change else Action.VIEW))
    return model


def version_get(
    user: Any, model_name: str, number: int | str, *, for_change: bool = False, action: Action | str | None = None
) -> ModelVersion:
    """A version of a visible model by number."""
    model = model_get(user, model_name, for_change=for_change, action=action)
    try:
        number = int(number)
    except (TypeError, ValueError):
        raise NotFound(f"Version {number!r} of model {model_name!r} not found.") from None
    version = model.versions.select_related("model", "created_by").filter(version=number).first()
    if version is None:
        raise NotFound(f"Version {number} of model {model_name!r} not found.")
    return version


def alias_get(model: RegisteredModel, name: str) -> ModelAlias:
    alias = model.aliases.select_related("version").filter(name=name).first()
    if alias is None:
        raise NotFound(f"Model {model.name!r} has no alias {name!r}.")
    return alias


def alias_history(model: RegisteredModel, name: str | None = None) -> QuerySet[AuditEvent]:
    """Alias moves of a model, newest first; one alias when `name` is given."""
    events = AuditEvent.objects.filter(model=model, object_type="alias").select_related("actor")
    if name is not None:
        events = events.filter(object_repr=name)
    return events


def audit_events_visible_to(user: Any) -> QuerySet[AuditEvent]:
    """Audit events about models the user may see, and the user's own; staff see everything."""
    events = AuditEvent.objects.select_related("actor")
    if _is_admin(user) and access.grant_of(user) is None:
        return events
    return events.filter(Q(model__in=models_visible_to(user)) | Q(actor=user, model__isnull=True))


def versions_identical(version: ModelVersion) -> list[int]:
    """Numbers of the model's other versions whose artifact has the same sha256 (a re-upload)."""
    return list(
        version.model.versions.filter(sha256=version.sha256).exclude(pk=version.pk).order_by("version")
        .values_list("version", flat=True)
    )  # fmt: skip


def versions_by_sha256(model_id: int) -> dict[str, list[int]]:
    """A model's version numbers grouped by artifact sha256 (one query)."""
    grouped: dict[str, list[int]] = {}
    rows = ModelVersion.objects.filter(model_id=model_id).order_by("version").values_list("sha256", "version")
    for sha256, number in rows:
        grouped.setdefault(sha256, []).append(number)
    return grouped


def version_for_serving(version_id: int) -> ModelVersion:
    """A version row for a worker about to load it (no access check: the caller was checked)."""
    version = ModelVersion.objects.select_related("model").filter(pk=version_id).first()
    if version is None:
        raise NotFound(f"Model version {version_id} no longer exists.")
    return version


def version_resolve(
    user: Any,
    model_name: str,
    *,
    version: int | str | None = None,
    alias: str | None = None,
    action: Action | str = Action.VIEW,
) -> ModelVersion:
    """The version a caller addresses: a number, an alias, or by default the `production` alias."""
    if version is not None and alias is not None:
        raise InvalidInput("Give a version or an alias, not both.")
    if version is not None:
        return version_get(user, model_name, version, action=action)
    model = model_get(user, model_name, action=action)
    name = alias or PRODUCTION_ALIAS
    holder = model.aliases.select_related("version__model").filter(name=name).first()
    if holder is None:
        raise NotFound(f"Model {model_name!r} has no alias {name!r}; pin a version or set the alias.")
    return holder.version
