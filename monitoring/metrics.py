"""Recording serving metrics off the hot path, and the Prometheus metrics of every process.

A prediction costs the process that answered it one list append: `record()` queues the
sample, and a background thread applies the queue every DRAIN_SECONDS, in bulk, to an
in-process aggregator (per version, minute, source and alias: counts, sums and a
log-spaced latency histogram) and to prometheus-client objects, then merges the
aggregator into this process's MetricBucket rows every METRICS_FLUSH_SECONDS. Nothing on
the prediction path waits on the database or writes a Prometheus file.

Prometheus runs in multiprocess mode: every web and worker process writes its values to
memory-mapped files under PROMETHEUS_MULTIPROC_DIR (default `$PORTAL_DATA_DIR/prometheus`),
and `/metrics` sums them, so the figures are right however many processes serve.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings

# Multiprocess mode is chosen when prometheus_client creates its first value, from the
# environment: set the directory before anything below imports it.
# A directory given from outside may be shared with processes we did not start.
OWN_DIRECTORY = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if OWN_DIRECTORY:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(Path(settings.DATA_DIR) / "prometheus")
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

import prometheus_client  # noqa: E402
from prometheus_client import Counter, Gauge, Histogram, multiprocess  # noqa: E402

logger = logging.getLogger(__name__)

# --- the latency histogram of the aggregates -------------------------------------------
# Bucket i holds latencies in [BASE * RATIO**i, BASE * RATIO**(i+1)) ms: 2**(1/8) apart,
# so a quantile read from it is within about 4.5 % of the true value, from 10 µs to 10 min.
HIST_BASE_MS = 0.01
HIST_RATIO = 2 ** (1 / 8)
HIST_BUCKETS = 208
_LOG_RATIO = math.log(HIST_RATIO)


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a latency in milliseconds."""
    if ms <= HIST_BASE_MS:
        return 0
    return min(HIST_BUCKETS - 1, int(math.log(ms / HIST_BASE_MS) / _LOG_RATIO))


def bucket_value(index: int) -> float:
    """The geometric middle of a bucket, in milliseconds."""
    return HIST_BASE_MS * HIST_RATIO ** (index + 0.5)


def batch_bucket(size: int) -> int:
    """Batch sizes in powers of two: bucket k holds sizes up to 2**k."""
    return max(0, (max(1, size) - 1).bit_length())


def quantiles(hist: dict[Any, int], qs: Iterable[float]) -> dict[str, float | None]:
    """p-quantiles (e.g. 0.5, 0.95) in ms from a merged histogram {bucket: count}."""
    items = sorted((int(k), v) for k, v in hist.items() if v)
    total = sum(v for _, v in items)
    result: dict[str, float | None] = {}
    for q in qs:
        key = f"p{round(q * 100):d}"
        if not total:
            result[key] = None
            continue
        rank, seen = q * total, 0
        for index, count in items:
            seen += count
            if seen >= rank:
                result[key] = round(bucket_value(index), 4)
                break
    return result


def hist_merge(into: dict[str, int], other: dict[Any, int]) -> dict[str, int]:
    """Add one histogram into another (JSON keys are strings)."""
    for key, count in other.items():
        into[str(key)] = into.get(str(key), 0) + int(count)
    return into


# --- Prometheus ---------------------------------------------------------------------------
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
    if not OWN_DIRECTORY:
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
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_heartbeat(worker: str, models_loaded: int) -> None:
    """Update a worker's gauges: resident models, memory and, with CUDA, GPU memory and utilisation."""
    MODELS_LOADED.labels(worker).set(models_loaded)
    WORKER_MEMORY.labels(worker).set(_resident_bytes())
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            GPU_MEMORY.labels(worker, device).set(torch.cuda.memory_allocated(index))
            try:
                GPU_UTILISATION.labels(worker, device).set(torch.cuda.utilization(index) / 100)
            except Exception:  # needs NVML (pynvml); memory is still reported without it
                logger.debug("GPU utilisation unavailable", exc_info=True)


# --- the aggregator -------------------------------------------------------------------------
# A cell: count, errors, latency sum, queue sum, compute sum, batch-size sum, payload bytes,
# latency histogram, batch-size histogram, counts by status code.
Cell = list[Any]
Key = tuple[int, int, str, str]  # version id, minute (epoch // 60), source, alias


class Recorder:
    """This process's aggregator and its background flusher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[tuple[Any, ...]] = []
        self._cells: dict[Key, Cell] = {}
        self._series: dict[tuple[str, int, str], tuple[Any, ...]] = {}
        self._counters: dict[tuple[str, int, str, int], Any] = {}
        self._pid = 0
        self._thread: threading.Thread | None = None
        # Tests switch the thread off and flush by hand.
        self.background = True
        self.process = ""

    def record(
        self,
        *,
        version_id: int,
        model: str,
        version: int,
        source: str,
        alias: str,
        status: int,
        total_ms: float,
        queue_ms: float = 0.0,
        compute_ms: float = 0.0,
        batch_size: int = 0,
        payload_bytes: int = 0,
    ) -> None:
        """Count one prediction: one append here; the background thread does the rest.

        Without a background thread (tests, management commands) the sample is applied at once.
        """
        if self._pid != os.getpid():
            self._forked()
        sample = (version_id, model, version, source, alias, status, total_ms, queue_ms, compute_ms, batch_size,
                  payload_bytes, int(time.time() // 60))  # fmt: skip
        with self._pending_lock:
            self._pending.append(sample)
        if self._thread is None:
            self.drain()

    def drain(self) -> None:
        """Apply the samples recorded since the last drain to the aggregates and to Prometheus, in bulk."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        # Prometheus values per series, summed here so each mmap'ed value is written once per drain.
        series: dict[tuple[str, int, str], _SeriesDelta] = {}
        with self._lock:
            for (version_id, model, version, source, alias, status, total_ms, queue_ms, compute_ms, batch_size,
                 payload_bytes, minute) in pending:  # fmt: skip
                failed = status >= 400
                _cell_add(self._cells, (version_id, minute, source, alias), status, failed, total_ms, queue_ms,
                          compute_ms, batch_size, payload_bytes)  # fmt: skip
                delta = series.get((model, version, source))
                if delta is None:
                    delta = series[(model, version, source)] = _SeriesDelta()
                delta.add(status, failed, total_ms, queue_ms, compute_ms, batch_size, payload_bytes)
        for (model, version, source), delta in series.items():
            self._prometheus(model, version, source, delta)

    def _prometheus(self, model: str, version: int, source: str, delta: _SeriesDelta) -> None:
        # Labelled children are looked up once per series, not per drain.
        children = self._series.get((model, version, source))
        if children is None:
            labels = (model, str(version), source)
            children = self._series[(model, version, source)] = (
                LATENCY.labels(*labels), QUEUE.labels(*labels), COMPUTE.labels(*labels), BATCH.labels(*labels),
                PAYLOAD.labels(*labels),
            )  # fmt: skip
        for status, count in delta.statuses.items():
            counter = self._counters.get((model, version, source, status))
            if counter is None:
                counter = self._counters[(model, version, source, status)] = REQUESTS.labels(
                    model, str(version), source, str(status)
                )
            counter.inc(count)
        histogram_add(children[0], [ms / 1000 for ms in delta.total_ms])
        histogram_add(children[1], [ms / 1000 for ms in delta.queue_ms])
        histogram_add(children[2], [ms / 1000 for ms in delta.compute_ms])
        histogram_add(children[3], delta.batch_sizes)
        if delta.payload_bytes:
            children[4].inc(delta.payload_bytes)

    def _forked(self) -> None:
        """First record in this process (or after a fork): start afresh, with a thread of our own."""
        with self._lock:
            self._pid = os.getpid()
            self._pending = []
            self._cells.clear()
            self._series.clear()
            self._counters.clear()
            self.process = f"{socket.gethostname()}:{self._pid}"[:80]
            self._thread = None
        interval = float(getattr(settings, "METRICS_FLUSH_SECONDS", 5.0))
        if self.background and interval > 0:
            self._thread = threading.Thread(target=self._run, args=(interval,), name="maas-metrics", daemon=True)
            self._thread.start()
            atexit.register(self.flush_quietly)

    def _run(self, interval: float) -> None:
        from django.db import close_old_connections

        flushed = time.monotonic()
        while True:
            time.sleep(min(DRAIN_SECONDS, interval))
            try:
                self.drain()
                if time.monotonic() - flushed >= interval:
                    flushed = time.monotonic()
                    self.flush()
            except Exception:  # the flusher must outlive a database outage
                logger.exception("flushing serving metrics failed; retrying")
            finally:
                close_old_connections()

    def take(self) -> dict[Key, Cell]:
        """Hand over what was recorded since the last flush."""
        self.drain()
        with self._lock:
            cells, self._cells = self._cells, {}
        return cells

    def restore(self, cells: dict[Key, Cell]) -> None:
        """Put cells that could not be written back, to go with the next flush."""
        with self._lock:
            for key, cell in cells.items():
                mine = self._cells.get(key)
                self._cells[key] = cell if mine is None else _cell_merge(mine, cell)

    def flush(self) -> int:
        """Merge the recorded cells into this process's MetricBucket rows; returns rows written."""
        from django.db import DatabaseError

        cells = self.take()
        if not cells:
            return 0
        try:
            return _cells_write(cells, self.process or f"{socket.gethostname()}:{os.getpid()}")
        except DatabaseError:
            # Kept for the next flush, unless it has been failing for an hour.
            horizon = int(time.time() // 60) - 60
            self.restore({key: cell for key, cell in cells.items() if key[1] > horizon})
            raise

    def flush_quietly(self) -> None:
        """Flush at exit: a failure is logged, never raised."""
        try:
            self.flush()
        except Exception:
            logger.warning("could not flush serving metrics at exit", exc_info=True)

    def reset(self) -> None:
        """Drop everything recorded and not yet flushed (tests)."""
        self.take()


# How often the background thread applies recorded samples (Prometheus lags by at most this).
DRAIN_SECONDS = 0.5


def _cell_add(
    cells: dict[Key, Cell], key: Key, status: int, failed: bool, total_ms: float, queue_ms: float, compute_ms: float,
    batch_size: int, payload_bytes: int,
) -> None:  # fmt: skip
    cell = cells.get(key)
    if cell is None:
        cell = cells[key] = [0, 0, 0.0, 0.0, 0.0, 0, 0, {}, {}, {}]
    cell[0] += 1
    cell[2] += total_ms
    cell[6] += payload_bytes
    hist = cell[7]
    index = latency_bucket(total_ms)
    hist[index] = hist.get(index, 0) + 1
    statuses = cell[9]
    statuses[status] = statuses.get(status, 0) + 1
    if failed:
        cell[1] += 1
    else:
        cell[3] += queue_ms
        cell[4] += compute_ms
        cell[5] += batch_size
        batches = cell[8]
        size = batch_bucket(batch_size)
        batches[size] = batches.get(size, 0) + 1


class _SeriesDelta:
    """What one Prometheus series gained in one drain."""

    __slots__ = ("batch_sizes", "compute_ms", "payload_bytes", "queue_ms", "statuses", "total_ms")

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.total_ms: list[float] = []
        self.queue_ms: list[float] = []
        self.compute_ms: list[float] = []
        self.batch_sizes: list[float] = []
        self.payload_bytes = 0

    def add(self, status: int, failed: bool, total_ms: float, queue_ms: float, compute_ms: float, batch_size: int,
            payload_bytes: int) -> None:  # fmt: skip
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.total_ms.append(total_ms)
        self.payload_bytes += payload_bytes
        if not failed:
            self.queue_ms.append(queue_ms)
            self.compute_ms.append(compute_ms)
            self.batch_sizes.append(batch_size)


def histogram_add(child: Any, values: list[float]) -> None:
    """Observe many values on a labelled Histogram, writing each bucket once.

    Histogram.observe writes the sum and one bucket per value; in multiprocess mode each
    write goes to a memory-mapped file. This does what observe does (a value lands in the
    first bucket whose upper bound is >= it), through the same value objects of the pinned
    prometheus-client; tests/monitoring/test_metrics.py checks it against observe().
    """
    if not values:
        return
    bounds = child._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    child._sum.inc(math.fsum(values))
    for index, count in enumerate(counts):
        if count:
            child._buckets[index].inc(count)


def buckets_prune() -> int:
    """Delete aggregates older than METRICS_RETENTION_DAYS (Celery beat runs it: monitoring.tasks.metrics_prune)."""
    from datetime import timedelta

    from django.utils import timezone

    from monitoring.models import MetricBucket

    days = float(getattr(settings, "METRICS_RETENTION_DAYS", 30))
    deleted, _ = MetricBucket.objects.filter(minute__lt=timezone.now() - timedelta(days=days)).delete()
    return deleted


def _cell_merge(into: Cell, other: Cell) -> Cell:
    for i in range(7):
        into[i] += other[i]
    for i in (7, 8, 9):
        for key, count in other[i].items():
            into[i][key] = into[i].get(key, 0) + count
    return into


def _cells_write(cells: dict[Key, Cell], process: str) -> int:
    from django.db import transaction

    from monitoring.models import MetricBucket
    from registry.models import ModelVersion

    # Versions deleted since their requests were answered take their traffic with them.
    alive = set(ModelVersion.objects.filter(pk__in={key[0] for key in cells}).values_list("pk", flat=True))
    written = 0
    with transaction.atomic():
        for (version_id, minute, source, alias), cell in cells.items():
            if version_id not in alive:
                continue
            moment = datetime.fromtimestamp(minute * 60, tz=UTC)
            # Only this process writes rows with its name: the lock never waits on another.
            row, _ = MetricBucket.objects.select_for_update().get_or_create(
                version_id=version_id, minute=moment, source=source, alias=alias[:32], process=process
            )
            row.count += cell[0]
            row.errors += cell[1]
            row.latency_sum_ms += cell[2]
            row.queue_sum_ms += cell[3]
            row.compute_sum_ms += cell[4]
            row.batch_size_sum += cell[5]
            row.payload_bytes += cell[6]
            row.latency_hist = hist_merge(dict(row.latency_hist), cell[7])
            row.batch_hist = hist_merge(dict(row.batch_hist), cell[8])
            row.status_counts = hist_merge(dict(row.status_counts), cell[9])
            row.save()
            written += 1
    return written


recorder = Recorder()
record = recorder.record


class Sample:
    """One prediction being timed by the gateway: started now, finished by `done(status)`."""

    __slots__ = ("alias", "model", "payload", "source", "started", "timing", "version", "version_id")

    def __init__(self, version_id: int, model: str, version: int, path_version: str | None, source: str = "v2") -> None:
        self.version_id, self.model, self.version, self.source = version_id, model, version, source
        self.alias = alias_of(path_version)
        self.started = time.perf_counter()
        self.payload = 0
        # The worker's figures for the batch the request rode in: qt, ct (ms) and bs (rows).
        self.timing: dict[str, Any] | None = None

    def done(self, status: int) -> None:
        timing = self.timing or {}
        recorder.record(
            version_id=self.version_id, model=self.model, version=self.version, source=self.source, alias=self.alias,
            status=status, total_ms=(time.perf_counter() - self.started) * 1000, queue_ms=timing.get("qt", 0.0),
            compute_ms=timing.get("ct", 0.0), batch_size=timing.get("bs", 0), payload_bytes=self.payload,
        )  # fmt: skip

    def failed(self, exc: BaseException) -> None:
        """Record a request that ended in an exception, with the HTTP status it is answered with."""
        status = getattr(exc, "status", None) or getattr(exc, "status_code", None) or 500
        self.done(int(status))


def job_chunk(job: Any, rows: int, began: float, *, ok: bool) -> None:
    """Record one chunk of a batch job as one prediction of `rows` rows (source `job`)."""
    ms = (time.perf_counter() - began) * 1000
    recorder.record(
        version_id=job.version_id, model=job.model_name, version=job.version_number, source="job", alias="",
        status=200 if ok else 422, total_ms=ms, compute_ms=ms, batch_size=rows,
    )  # fmt: skip


def alias_of(path_version: str | None) -> str:
    """The alias a request used: the default `production`, an alias name, or '' for a pinned number."""
    if path_version is None:
        return "production"
    return "" if path_version.isdigit() else path_version


__all__ = ["Sample", "alias_of", "exposition", "quantiles", "record", "recorder", "worker_heartbeat"]
