"""Serving metrics and token usage: the aggregates' histogram, the Prometheus metrics, the recorder.

The serving plane reports through `inference.telemetry`; monitoring registers the
recorder there as its sink (MonitoringConfig.ready).
"""

from __future__ import annotations

from monitoring.metrics.histogram import (
    HIST_BASE_MS,
    HIST_BUCKETS,
    HIST_RATIO,
    batch_bucket,
    bucket_value,
    hist_merge,
    latency_bucket,
    quantiles,
)
from monitoring.metrics.prometheus import (
    BATCH_BUCKETS,
    LATENCY_BUCKETS,
    exposition,
    generation_load,
    histogram_add,
    multiprocess_dir_reset,
    process_gone,
    worker_heartbeat,
)
from monitoring.metrics.recording import (
    DRAIN_SECONDS,
    Recorder,
    buckets_prune,
    generation,
    record,
    recorder,
    usage,
)
from monitoring.metrics.usage import UsageMeter, usage_prune, usage_write

__all__ = [
    "BATCH_BUCKETS",
    "DRAIN_SECONDS",
    "HIST_BASE_MS",
    "HIST_BUCKETS",
    "HIST_RATIO",
    "LATENCY_BUCKETS",
    "Recorder",
    "UsageMeter",
    "batch_bucket",
    "bucket_value",
    "buckets_prune",
    "exposition",
    "generation",
    "generation_load",
    "hist_merge",
    "histogram_add",
    "latency_bucket",
    "multiprocess_dir_reset",
    "process_gone",
    "quantiles",
    "record",
    "recorder",
    "usage",
    "usage_prune",
    "usage_write",
    "worker_heartbeat",
]
