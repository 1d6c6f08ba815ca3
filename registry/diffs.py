"""The version comparison: what differs between versions of one model, row by row.

Rows come from the versions themselves (artifact, signature, serving parameters, lineage,
source) and from other apps through `hooks.version_metrics` (monitoring's latest
evaluation per dataset), so the registry never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.template.defaultfilters import filesizeformat
from django.urls import reverse

from registry import hooks
from registry.hooks import Cell
from registry.models import ModelVersion
from registry.sources import SOURCE_KEYS, source_rows

MIN_VERSIONS = 2
MAX_VERSIONS = 6
EMPTY = "—"


@dataclass(frozen=True)
class DiffRow:
    """One compared property: its section, its label and one cell per version."""

    section: str
    label: str
    cells: list[Cell]

    @property
    def differs(self) -> bool:
        return len({text for text, _ in self.cells}) > 1


def _text(value: Any) -> str:
    if value is None or value == "" or value == []:
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _tensor(spec: dict[str, Any]) -> str:
    return f"{spec.get('datatype', '?')} {spec.get('shape', [])}"


# (section, label, value of a version): the fixed rows, in page order.
FIXED_ROWS: list[tuple[str, str, Callable[[ModelVersion], Any]]] = [
    ("Artifact", "Status", lambda v: v.status),
    ("Artifact", "Format", lambda v: v.get_format_display()),
    ("Artifact", "Task", lambda v: v.get_task_display() if v.task else ""),
    ("Artifact", "Size", lambda v: f"{filesizeformat(v.size_bytes)} ({v.size_bytes:,} bytes)"),
    ("Artifact", "sha256", lambda v: v.sha256[:16]),
    ("Artifact", "File", lambda v: v.original_filename),
    ("Artifact", "Uploaded by", lambda v: v.created_by.username if v.created_by else ""),
    ("Artifact", "Description", lambda v: v.description),
    ("Artifact", "Tags", lambda v: ", ".join(sorted(tag.name for tag in v.tags.all()))),
    ("Signature", "Signature from", lambda v: v.signature_source),
    ("Signature", "Labels", lambda v: ", ".join(str(label) for label in v.labels or [])),
    ("Parameters", "Parameter count", lambda v: (v.validation or {}).get("parameter_count")),
    ("Parameters", "Weights dtype", lambda v: (v.validation or {}).get("dtype")),
    ("Parameters", "Context length", lambda v: (v.validation or {}).get("context_length")),
    ("Parameters", "max_batch_size", lambda v: v.max_batch_size),
    ("Parameters", "max_batch_delay_ms", lambda v: v.max_batch_delay_ms),
    ("Parameters", "max_tokens_default", lambda v: v.max_tokens_default),
    ("Parameters", "max_tokens_limit", lambda v: v.max_tokens_limit),
    ("Parameters", "Batching", lambda v: (v.validation or {}).get("batching")),
    ("Parameters", "Latency p50 (validation)", lambda v: _latency(v)),
    ("Lineage", "Derivation", lambda v: v.derivation),
]


def _latency(version: ModelVersion) -> str:
    latency = (version.validation or {}).get("latency_ms") or {}
    return f"{latency['p50']:.3g} ms" if isinstance(latency.get("p50"), int | float) else ""


def _signature_rows(versions: list[ModelVersion]) -> list[DiffRow]:
    rows = []
    for kind in ("inputs", "outputs"):
        names = list(dict.fromkeys(spec["name"] for v in versions for spec in v.signature.get(kind, [])))
        for name in names:
            cells = []
            for version in versions:
                spec = next((s for s in version.signature.get(kind, []) if s["name"] == name), None)
                cells.append((_tensor(spec) if spec else EMPTY, ""))
            rows.append(DiffRow("Signature", f"{kind[:-1]} {name}", cells))
    return rows


def _source_rows(versions: list[ModelVersion]) -> list[DiffRow]:
    by_version = [{row["key"]: row for row in source_rows(v.source or {})} for v in versions]
    keys = [key for key in SOURCE_KEYS if any(key in rows for rows in by_version)]
    keys += sorted({key for rows in by_version for key in rows} - set(keys))
    return [
        DiffRow(
            "Source",
            SOURCE_KEYS.get(key, key),
            [(rows[key]["value"], rows[key]["href"]) if key in rows else (EMPTY, "") for rows in by_version],
        )
        for key in keys
    ]


def _metric_rows(versions: list[ModelVersion]) -> list[DiffRow]:
    metrics = hooks.version_metrics(versions)
    labels = sorted({label for version in versions for label in metrics.get(version.pk, {})})
    return [
        DiffRow("Metrics", label, [metrics.get(v.pk, {}).get(label, (EMPTY, "")) for v in versions]) for label in labels
    ]


def diff_rows(versions: list[ModelVersion]) -> list[DiffRow]:
    """Every compared row of these versions (same model), rows empty for all of them left out."""
    fixed = [DiffRow(section, label, [(_text(value(v)), "") for v in versions]) for section, label, value in FIXED_ROWS]
    parents = DiffRow("Lineage", "Derived from", [
        (f"v{v.parent.version}", reverse("registry:version-detail", args=[v.model.name, v.parent.version]))
        if v.parent else (EMPTY, "")
        for v in versions
    ])  # fmt: skip
    rows = [row for row in fixed if row.section in ("Artifact", "Signature")]
    rows += _signature_rows(versions)
    rows += [row for row in fixed if row.section == "Parameters"]
    rows += [parents, *(row for row in fixed if row.section == "Lineage")]
    rows += _source_rows(versions) + _metric_rows(versions)
    return [row for row in rows if any(text != EMPTY for text, _ in row.cells)]


def diff_sections(rows: list[DiffRow], differences_only: bool) -> list[dict[str, Any]]:
    """Rows grouped by section for the page, each row marked same/different and hidden when asked."""
    sections: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        hidden = differences_only and not row.differs
        sections.setdefault(row.section, []).append(
            {"label": row.label, "cells": row.cells, "differs": row.differs, "hidden": hidden}
        )
    return [
        {"name": name, "rows": items, "hidden": all(item["hidden"] for item in items)}
        for name, items in sections.items()
    ]
