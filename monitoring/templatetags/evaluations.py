"""Evaluation evidence where promotion decisions are made (the model page's versions table).

The registry's model page loads this library, as it includes monitoring's charts: the
registry never imports monitoring.
"""

from __future__ import annotations

import math
from typing import Any

from django import template

from monitoring.models import LOWER_IS_BETTER, EvaluationRun, RunStatus, TaskType

register = template.Library()

# The figure a version's evaluation is judged by, per task.
HEADLINE: dict[str, str] = {TaskType.CLASSIFICATION: "accuracy", TaskType.REGRESSION: "rmse"}


def _latest(version: Any) -> EvaluationRun | None:
    return (
        EvaluationRun.objects.filter(version=version, status=RunStatus.SUCCEEDED)
        .select_related("dataset")
        .order_by("-finished_at", "-pk")
        .first()
    )


def _figure(run: EvaluationRun) -> tuple[str, float] | None:
    metric = HEADLINE.get(run.dataset.task)
    value = (run.metrics or {}).get(metric) if metric else None
    return (metric, float(value)) if metric and isinstance(value, int | float) else None


@register.simple_tag
def version_evaluation(version: Any) -> str:
    """'accuracy 0.993 on iris-holdout' for the version's latest finished evaluation ('' without one)."""
    run = _latest(version)
    figure = _figure(run) if run else None
    if run is None or figure is None:
        return ""
    return f"{figure[0]} {figure[1]:.3g} on {run.dataset.name}"


@register.simple_tag
def promotion_warning(version: Any, production: Any) -> str:
    """Why promoting `version` over `production` looks like a step back ('' when it does not).

    Compared on production's latest finished dataset, when the candidate has a finished run on it too.
    """
    if production is None or version is None or version.pk == production.pk:
        return ""
    held = _latest(production)
    if held is None or (held_figure := _figure(held)) is None:
        return ""
    candidate = (
        EvaluationRun.objects.filter(version=version, dataset=held.dataset, status=RunStatus.SUCCEEDED)
        .order_by("-finished_at", "-pk")
        .first()
    )
    if candidate is None or (figure := _figure(candidate)) is None:
        return ""
    metric, value = figure
    worse = value > held_figure[1] if metric in LOWER_IS_BETTER else value < held_figure[1]
    if not worse:
        return ""
    return (
        f"v{version.version}'s {metric} on {held.dataset.name} is {value:.3g}, worse than production "
        f"(v{production.version}): {held_figure[1]:.3g}. Promote it anyway?"
    )


@register.filter
def sig(value: Any, digits: int = 3) -> str:
    """A figure to `digits` significant figures ("0.364 ms", not "0.3644"); whole above that ("75,739")."""
    if value is None or value == "":
        return "—"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return str(number)
    if abs(number) >= 10**digits:
        return f"{round(number):,}"
    return f"{number:.{digits}g}"
