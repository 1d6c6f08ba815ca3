"""Conversions on the version page: the form to start one, its runs, and a child beside its parent.

The registry's version page loads this library (as it loads monitoring's): the registry never
imports inference.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse

from inference.conversions import recipes, services
from inference.models import ConversionRun
from registry import hooks

register = template.Library()


def _figure(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:.4g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def comparison_rows(run: ConversionRun) -> list[dict[str, Any]]:
    """Parent and child side by side: evaluation figures, latency, size on disk and in memory."""
    parent, child = run.version, run.child
    result = run.result or {}
    latency = result.get("latency_ms") or {}
    memory = result.get("memory_bytes") or {}
    sizes = result.get("sizes") or {}
    rows: list[dict[str, Any]] = []
    if parent is not None and child is not None:
        metrics = hooks.version_metrics([parent, child])
        labels = sorted(
            label
            for label in set(metrics.get(parent.pk, {})) | set(metrics.get(child.pk, {}))
            if not label.startswith(services.METRIC_PREFIX)
        )
        for label in labels:
            left, right = metrics.get(parent.pk, {}).get(label), metrics.get(child.pk, {}).get(label)
            rows.append(
                {
                    "label": label,
                    "parent": left[0] if left else "—",
                    "child": right[0] if right else "—",
                    "kind": "metric",
                }
            )
    for quantile in ("p50", "p95"):
        rows.append(
            {
                "label": f"latency {quantile} (ms, same host, same example)",
                "kind": "latency",
                "parent": _figure((latency.get("parent") or {}).get(quantile)),
                "child": _figure((latency.get("child") or {}).get(quantile)),
            }
        )
    rows.append(
        {
            "label": "size on disk (bytes)",
            "kind": "size",
            "parent": _figure(sizes.get("parent")),
            "child": _figure(sizes.get("child")),
        }
    )
    rows.append(
        {
            "label": "weights in memory (bytes)",
            "kind": "size",
            "parent": _figure(memory.get("parent")),
            "child": _figure(memory.get("child")),
        }
    )
    return rows


@register.inclusion_tag("inference/_version_conversions.html", takes_context=True)
def version_conversions(context: dict[str, Any], version: Any) -> dict[str, Any]:
    """The version page's conversion card."""
    user = context["request"].user
    origin = ConversionRun.objects.select_related("version", "child").filter(child=version).first()
    runs = list(services.conversions_visible_to(user).filter(version=version)[:10])
    return {
        "version": version,
        "targets": services.conversion_targets(user, version),
        "target_labels": dict(ConversionRun._meta.get_field("target").choices or []),
        "runs": [(run, reverse("api:conversion-detail", args=[run.pk])) for run in runs],
        "origin": origin,
        "rows": comparison_rows(origin) if origin is not None else [],
        "tolerance": (origin.result or {}).get("tolerance") if origin is not None else None,
        "comparison": (origin.result or {}).get("comparison") if origin is not None else None,
        "lineage": services.version_lineage(version),
        "csrf_token": context.get("csrf_token"),
        "steps": recipes.STEPS,
    }
