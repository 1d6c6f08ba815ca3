"""The Prometheus metrics of every web and worker process, in multiprocess mode.

Every process writes its values to memory-mapped files under PROMETHEUS_MULTIPROC_DIR,
and `/metrics` sums them, so the figures are right however many processes serve. The
directory must be in the environment before prometheus_client is first imported: the
settings module sets it (default `$PORTAL_DATA_DIR/prometheus`).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import resource
from pathlib import Path
from typing import Any

import prometheus_client
import torch
from django.conf import settings
from prometheus_client import Counter, Gauge, Histogram, multiprocess

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LABELS = ("model", "version", "source")

REQUESTS = Counter("maas_requests", "Predictions answered, by status code.", [*LABELS, "status"])
LATENCY = Histogram("maas_request_latency_seconds", "Total latency of a prediction.", LABELS, buckets=LATENCY_BUCKETS)
QUEUE = Histogram("maas_queue_seconds", "Time a prediction waited for a worker.", LABELS, buckets=LATENCY_BUCKETS)
COMPUTE = Histogram("maas_compute_seconds", "Forward-pass time of the batch a prediction rode in.", LABELS,
                    buckets=LATENCY_BUCKETS)  # fmt: skip
BATCH = Histogram("maas_batch_size", "Rows in the forward pass a prediction rode in.", LABELS, buckets=BATCH_BUCKETS)
PAYLOAD = Counter("maas_request_payload_bytes", "Request body bytes received.", LABELS)
MODELS_LOADED = Gauge("maas_worker_models_loaded", "Models resident in a worker process.", ["worker"],
                      multiprocess_mode="liveall")  # fmt: skip
WORKER_MEMORY = Gauge("maas_worker_memory_bytes", "Resident memory of a worker process.", ["worker"],
                      multiprocess_mode="liveall")  # fmt: skip
GPU_MEMORY = Gauge("maas_gpu_memory_bytes", "CUDA memory allocated by a worker process.", ["worker", "device"],
                   multiprocess_mode="liveall")  # fmt: skip
GPU_UTILISATION = Gauge("maas_gpu_utilization_ratio", "GPU utilisation seen by a worker (0-1).", ["worker", "device"],
                        multiprocess_mode="liveall")  # fmt: skip


def exposition() -> tuple[bytes, str]:
    """The Prometheus text exposition summed over every process of this host."""
    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST


def multiprocess_dir_reset() -> None:
    """Remove the value files of earlier runs (call once before a fleet of processes starts).

    Only a directory this process chose: one set in the environment is left to its owner.
    """
    if not settings.PROMETHEUS_OWN_DIRECTORY:
        return
    for path in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        path.unlink(missing_ok=True)


def process_gone(pid: int) -> None:
    """Forget the live gauges of a process that exited."""
    multiprocess.mark_process_dead(pid)


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_heartbeat(worker: str, models_loaded: int) -> None:
    """Update a worker's gauges: resident models, memory and, with CUDA, GPU memory and utilisation."""
    MODELS_LOADED.labels(worker).set(models_loaded)
    WORKER_MEMORY.labels(worker).set(_resident_bytes())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            GPU_MEMORY.labels(worker, device).set(torch.cuda.memory_allocated(index))
            try:
                GPU_UTILISATION.labels(worker, device).set(torch.cuda.utilization(index) / 100)
            except Exception:  # needs NVML (pynvml); memory is still reported without it
                logger.debug("GPU utilisation unavailable", exc_info=True)


def histogram_add(child: Any, values: list[float]) -> None:
    """Observe many values on a labelled Histogram, writing each bucket once.

    `Histogram.observe` writes the sum and one bucket per value, each write a locked store
    into a memory-mapped file in multiprocess mode; per value, that cost 15 % of the MLP's
    c=32 throughput (bench/serving.py: 2,549 vs 3,002 req/s, same machine, same hour).
    So, where the pinned prometheus-client has them, the bucket counts are summed here and
    written once each through the histogram's own value objects (what observe does: a value
    lands in the first bucket whose upper bound is >= it); tests/monitoring/test_metrics.py
    checks the result against observe(). Without them (another version), observe() it is.
    """
    if not values:
        return
    bounds, buckets, total = (getattr(child, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None:
        for value in values:
            child.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    total.inc(math.fsum(values))
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)
