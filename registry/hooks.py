"""Extension points other apps register into, so that the registry never imports them.

- Promotion checks (monitoring's evaluation gate) may refuse an alias move, or allow it
  as an audited override.
- The validation requester (inference) queues the worker-side validation of a version.
- Stored-file contributors (monitoring's datasets) name files to delete with a model.
- Version metrics (monitoring's latest evaluation per dataset) fill the metric rows of
  the version comparison.
- Derived-version listeners (monitoring's evaluations) hear of a version converted from
  another, ready to be compared with its parent.

Apps register in their `AppConfig.ready()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from registry.models import ModelVersion, RegisteredModel

# A shown value and its link ("" without one).
Cell = tuple[str, str]
# Per version id: rows by label ("iris-holdout · accuracy" → ("0.967", "/evaluations/…/")).
VersionMetrics = dict[int, dict[str, Cell]]


@dataclass(frozen=True)
class Promotion:
    """An alias move about to happen."""

    actor: Any
    model: RegisteredModel
    alias: str
    version_number: int
    force: bool
    action: str


class PromotionCheck(Protocol):
    def __call__(self, promotion: Promotion) -> Callable[[RegisteredModel], None] | None:
        """Raise to refuse the move; return a recorder to call inside the move's transaction
        (the model row locked) when the move passes only by override, else None."""


_promotion_checks: list[PromotionCheck] = []
_validation_requester: Callable[[int], None] | None = None
_model_file_sources: list[Callable[[RegisteredModel], list[str]]] = []
_version_metric_sources: list[Callable[[list[ModelVersion]], VersionMetrics]] = []
_derived_listeners: list[Callable[[ModelVersion, Any], object]] = []


def promotion_check_register(check: PromotionCheck) -> None:
    if check not in _promotion_checks:
        _promotion_checks.append(check)


def promotion_checks_run(promotion: Promotion) -> list[Callable[[RegisteredModel], None]]:
    """Run every check (before the move's transaction); the override recorders of those that were forced."""
    recorders = []
    for check in _promotion_checks:
        recorder = check(promotion)
        if recorder is not None:
            recorders.append(recorder)
    return recorders


def validation_requester_register(requester: Callable[[int], None]) -> None:
    global _validation_requester
    _validation_requester = requester


def validation_request(version_id: int) -> None:
    """Queue the validation of a version; raises when nothing can take it (no inference app, broker down)."""
    if _validation_requester is None:
        raise RuntimeError("no validation requester is registered (is the inference app installed?)")
    _validation_requester(version_id)


def model_files_register(source: Callable[[RegisteredModel], list[str]]) -> None:
    if source not in _model_file_sources:
        _model_file_sources.append(source)


def model_files(model: RegisteredModel) -> list[str]:
    """Stored files that other apps keep for the model, deleted with it."""
    return [path for source in _model_file_sources for path in source(model)]


def version_metrics_register(source: Callable[[list[ModelVersion]], VersionMetrics]) -> None:
    if source not in _version_metric_sources:
        _version_metric_sources.append(source)


def version_metrics(versions: list[ModelVersion]) -> VersionMetrics:
    """Figures other apps keep about these versions (of one model), merged per version id."""
    merged: VersionMetrics = {}
    for source in _version_metric_sources:
        for version_id, rows in source(versions).items():
            merged.setdefault(version_id, {}).update(rows)
    return merged


def version_derived_register(listener: Callable[[ModelVersion, Any], object]) -> None:
    if listener not in _derived_listeners:
        _derived_listeners.append(listener)


def version_derived(version: ModelVersion, actor: Any) -> None:
    """Tell the listeners that `version` (with a parent) was derived and is ready, on `actor`'s behalf."""
    for listener in _derived_listeners:
        listener(version, actor)
