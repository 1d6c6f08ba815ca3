"""Monitoring operations: serving statistics, evaluation datasets and runs, the promotion gate."""

from __future__ import annotations

from monitoring.services.evaluation import (
    MAX_RUN_ATTEMPTS,
    PROGRESS_SECONDS,
    dataset_create,
    dataset_delete,
    dataset_get,
    evaluation_enqueue,
    evaluation_execute,
    evaluation_start,
    evaluations_expire_stale,
    latest_runs,
    run_get,
    runs_visible_to,
)
from monitoring.services.gate import (
    GateRefused,
    gate_can_override,
    gate_check,
    gate_delete,
    gate_evaluate,
    gate_override_record,
    gate_set,
)
from monitoring.services.stats import (
    FIELDS,
    QUANTILES,
    WINDOWS,
    Totals,
    batch_histogram,
    buckets_since,
    series,
    version_stats,
    window_parse,
)

__all__ = [
    "FIELDS",
    "MAX_RUN_ATTEMPTS",
    "PROGRESS_SECONDS",
    "QUANTILES",
    "WINDOWS",
    "GateRefused",
    "Totals",
    "batch_histogram",
    "buckets_since",
    "dataset_create",
    "dataset_delete",
    "dataset_get",
    "evaluation_enqueue",
    "evaluation_execute",
    "evaluation_start",
    "evaluations_expire_stale",
    "gate_can_override",
    "gate_check",
    "gate_delete",
    "gate_evaluate",
    "gate_override_record",
    "gate_set",
    "latest_runs",
    "run_get",
    "runs_visible_to",
    "series",
    "version_stats",
    "window_parse",
]
