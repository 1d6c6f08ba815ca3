"""The promotion gate: an alias moves only to a version whose evaluation meets the thresholds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction

from core.errors import Conflict, InvalidInput, NotFound
from monitoring.models import (
    LOWER_IS_BETTER,
    RUN_ACTIVE,
    EvaluationDataset,
    EvaluationRun,
    GateMetric,
    PromotionGate,
    TaskType,
)
from monitoring.services.evaluation import evaluation_start, latest_runs
from registry import access
from registry.audit import audit_record
from registry.hooks import Promotion
from registry.models import ModelVersion, RegisteredModel, VersionStatus
from registry.services.models import alias_name_check


class GateRefused(Conflict):
    """The evaluation gate refuses to move the alias; `figures` holds what it compared."""

    code = "gate_refused"

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message, field="version")
        self.figures = figures


def gate_can_override(user: Any, model: RegisteredModel) -> bool:
    """Who may force a promotion past the gate: owners and staff (registry.access)."""
    return access.can_override_gate(user, model)


def gate_set(
    *, actor: Any, model: RegisteredModel, dataset: EvaluationDataset, metric: str = GateMetric.ACCURACY,
    tolerance: float = 0.0, min_value: float | None = None, max_p95_ms: float | None = None,
    alias: str = "production", enabled: bool = True,
) -> PromotionGate:  # fmt: skip
    """Require an evaluation on `dataset` before `alias` moves (created or replaced)."""
    alias_name_check(alias)
    if dataset.model_id != model.pk:
        raise InvalidInput(f"Dataset {dataset.name!r} belongs to another model.", field="dataset")
    if metric not in GateMetric.values:
        raise InvalidInput(f"metric must be one of {', '.join(GateMetric.values)}.", field="metric")
    regression = metric in (GateMetric.MAE, GateMetric.RMSE, GateMetric.R2)
    if regression != (dataset.task == TaskType.REGRESSION):
        raise InvalidInput(f"Metric {metric!r} does not apply to a {dataset.task} dataset.", field="metric")
    if tolerance < 0:
        raise InvalidInput("tolerance must be 0 or more.", field="tolerance")
    if max_p95_ms is not None and max_p95_ms <= 0:
        raise InvalidInput("max_p95_ms must be positive.", field="max_p95_ms")
    values = {"enabled": enabled, "alias": alias, "dataset": dataset, "metric": metric, "tolerance": tolerance,
              "min_value": min_value, "max_p95_ms": max_p95_ms, "updated_by": actor}  # fmt: skip
    with transaction.atomic():
        gate, _ = PromotionGate.objects.update_or_create(model=model, defaults=values)
        audit_record(actor, "gate.set", model=model, object_type="gate", object_repr=alias,
                     after={"dataset": dataset.name, "metric": metric, "tolerance": tolerance, "min_value": min_value,
                            "max_p95_ms": max_p95_ms, "enabled": enabled})  # fmt: skip
    return gate


def gate_delete(*, actor: Any, model: RegisteredModel) -> None:
    with transaction.atomic():
        deleted, _ = PromotionGate.objects.filter(model=model).delete()
        if not deleted:
            raise NotFound(f"Model {model.name!r} has no promotion gate.")
        audit_record(actor, "gate.delete", model=model, object_type="gate", object_repr="gate")


def _figure(run: EvaluationRun | None, metric: str) -> float | None:
    if run is None:
        return None
    value = run.metrics.get(metric)
    return float(value) if value is not None else None


def gate_evaluate(gate: PromotionGate, candidate: ModelVersion) -> tuple[bool, dict[str, Any], list[str]]:
    """Whether a version passes the gate, the figures compared, and the reasons it fails."""
    latest = latest_runs(gate.model)
    run = latest.get((candidate.pk, gate.dataset_id))
    holder = gate.model.aliases.select_related("version").filter(name=gate.alias).first()
    baseline = latest.get((holder.version_id, gate.dataset_id)) if holder else None
    lower = gate.metric in LOWER_IS_BETTER
    value, reference = _figure(run, gate.metric), _figure(baseline, gate.metric)
    figures: dict[str, Any] = {
        "dataset": gate.dataset.name, "metric": gate.metric, "candidate_version": candidate.version,
        "candidate_run": str(run.pk) if run else None, "candidate_value": value,
        "baseline_version": holder.version.version if holder else None, "baseline_value": reference,
        "tolerance": gate.tolerance, "min_value": gate.min_value, "max_p95_ms": gate.max_p95_ms,
        "candidate_p95_ms": run.metrics.get("latency_ms", {}).get("p95") if run else None,
    }  # fmt: skip
    reasons = []
    if value is None:
        reasons.append(f"v{candidate.version} has no finished evaluation on dataset {gate.dataset.name!r}")
        return False, figures, reasons
    if reference is not None:
        required = reference + gate.tolerance if lower else reference - gate.tolerance
        figures["required"] = required
        if (value > required) if lower else (value < required):
            reasons.append(
                f"{gate.metric} {value:.4g} is {'above' if lower else 'below'} the required {required:.4g} "
                f"({gate.alias} v{figures['baseline_version']} has {reference:.4g}, tolerance {gate.tolerance:g})"
            )
    if gate.min_value is not None and ((value > gate.min_value) if lower else (value < gate.min_value)):
        reasons.append(f"{gate.metric} {value:.4g} is {'above the ceiling' if lower else 'below the floor'} "
                       f"{gate.min_value:g}")  # fmt: skip
    p95 = figures["candidate_p95_ms"]
    if gate.max_p95_ms is not None and p95 is not None and p95 > gate.max_p95_ms:
        reasons.append(f"p95 batch latency {p95:.4g} ms is above the bound {gate.max_p95_ms:g} ms")
    return not reasons, figures, reasons


def gate_check(*, actor: Any, model: RegisteredModel, alias: str, version_number: int, force: bool = False,
               action: str = "alias.move") -> dict[str, Any] | None:  # fmt: skip
    """Called before an alias moves: None to proceed, the figures of a forced pass, or GateRefused.

    With no finished evaluation of the candidate, the gate starts one (unless one is
    already queued or running) and refuses until it has finished. Roll backs are not gated.
    """
    gate = PromotionGate.objects.select_related("dataset", "model").filter(model=model, enabled=True).first()
    if gate is None or gate.alias != alias or action == "alias.rollback":
        return None
    candidate = model.versions.filter(version=version_number).first()
    holder = model.aliases.filter(name=alias).values_list("version__version", flat=True).first()
    if candidate is None or candidate.status != VersionStatus.READY or holder == version_number:
        return None  # alias_set refuses or does nothing on its own
    passed, figures, reasons = gate_evaluate(gate, candidate)
    if passed:
        return None
    if force:
        if not gate_can_override(actor, model):
            raise GateRefused(f"Only a user with the right to override the gate may force v{version_number} "
                              f"to {alias}: {'; '.join(reasons)}.", figures)  # fmt: skip
        return {**figures, "reasons": reasons, "forced": True}
    if figures["candidate_run"] is None:
        active = EvaluationRun.objects.filter(version=candidate, dataset=gate.dataset, status__in=RUN_ACTIVE).first()
        if active is None:
            active = evaluation_start(actor=actor, version=candidate, dataset=gate.dataset)
        figures["pending_run"] = str(active.pk)
        reasons[0] += f"; evaluation {active.short_id} is {active.status}, promote again once it has succeeded"
    raise GateRefused(f"The promotion gate refuses v{version_number} for {alias}: {'; '.join(reasons)}.", figures)


def gate_override_record(actor: Any, model: RegisteredModel, alias: str, figures: dict[str, Any]) -> None:
    """Audit a promotion forced past the gate (inside the alias move's transaction)."""
    audit_record(actor, "gate.override", model=model, object_type="gate", object_repr=alias,
                 before={"version": figures.get("baseline_version")}, after=figures)  # fmt: skip


def gate_promotion_check(promotion: Promotion) -> Callable[[RegisteredModel], None] | None:
    """The gate as a registry promotion check: refuses, passes, or passes by override (then audited)."""
    forced = gate_check(
        actor=promotion.actor,
        model=promotion.model,
        alias=promotion.alias,
        version_number=promotion.version_number,
        force=promotion.force,
        action=promotion.action,
    )
    if forced is None:
        return None
    return lambda locked: gate_override_record(promotion.actor, locked, promotion.alias, forced)


def gate_dataset_files(model: RegisteredModel) -> list[str]:
    """The stored evaluation datasets of a model, deleted with it (a registry hook)."""
    return list(EvaluationDataset.objects.filter(model=model).values_list("path", flat=True))
