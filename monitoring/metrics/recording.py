"""Recording serving metrics off the hot path.

A prediction costs the process that answered it one list append: `record()` queues the
sample, and a background thread applies the queue every DRAIN_SECONDS, in bulk, to an
in-process aggregator (per version, minute, source and alias: counts, sums and a
log-spaced latency histogram; for generated answers also their time to first token,
inter-token gaps and decoding time) and to the Prometheus metrics, then merges the aggregator
into this process's MetricBucket rows every METRICS_FLUSH_SECONDS. Nothing on the
prediction path waits on the database or writes a Prometheus file.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction
from django.utils import timezone

from monitoring.metrics.histogram import batch_bucket, hist_merge, latency_bucket
from monitoring.metrics.prometheus import (
    BATCH,
    COMPUTE,
    INTER_TOKEN,
    LATENCY,
    OUTPUT_SPEED,
    PAYLOAD,
    QUEUE,
    REQUESTS,
    TTFT,
    histogram_add,
)
from monitoring.metrics.usage import UsageCell, UsageKey, UsageMeter, UsageSample, usage_write
from monitoring.models import MetricBucket
from registry.models import ModelVersion

logger = logging.getLogger(__name__)

# --- the aggregator -------------------------------------------------------------------------
# A cell: count, errors, latency sum, queue sum, compute sum, batch-size sum, payload bytes,
# latency histogram, batch-size histogram, counts by status code; then, of generated answers:
# answers, TTFT sum, TTFT histogram, inter-token gap sum, gap count, gap histogram, tokens
# after the first, decoding time (first to last token) sum. Times in ms.
Cell = list[Any]
SUMMED = (*range(7), 10, 11, 13, 14, 16, 17)
HISTOGRAMS = (7, 8, 9, 12, 15)
Key = tuple[int, int, str, str]  # version id, minute (epoch // 60), source, alias


class Recorder:
    """This process's aggregator and its background flusher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[tuple[Any, ...]] = []
        self._usage_pending: list[UsageSample] = []
        self._generation_pending: list[tuple[Any, ...]] = []
        self.usage_meter = UsageMeter()
        self._cells: dict[Key, Cell] = {}
        self._series: dict[tuple[str, int, str], tuple[Any, ...]] = {}
        self._generation_series: dict[tuple[str, int, str], tuple[Any, ...]] = {}
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

    def usage(
        self,
        *,
        version_id: int,
        model: str,
        version: int,
        user_id: int | None,
        token_id: int | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """Meter one answered request's tokens: one append here, like record()."""
        if self._pid != os.getpid():
            self._forked()
        sample = (version_id, model, version, user_id, token_id, prompt_tokens, completion_tokens,
                  int(time.time() // 60))  # fmt: skip
        with self._pending_lock:
            self._usage_pending.append(sample)
        if self._thread is None:
            self.drain()

    def generation(
        self,
        *,
        version_id: int,
        model: str,
        version: int,
        source: str,
        ttft_ms: float,
        inter_token_ms: list[float],
        completion_tokens: int,
        decode_ms: float,
    ) -> None:
        """Time one generated answer: one append here, like record()."""
        if self._pid != os.getpid():
            self._forked()
        sample = (version_id, model, version, source, ttft_ms, inter_token_ms, completion_tokens, decode_ms,
                  int(time.time() // 60))  # fmt: skip
        with self._pending_lock:
            self._generation_pending.append(sample)
        if self._thread is None:
            self.drain()

    def drain(self) -> None:
        """Apply the samples recorded since the last drain to the aggregates and to Prometheus, in bulk."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
            usage, self._usage_pending = self._usage_pending, []
            generated, self._generation_pending = self._generation_pending, []
        if usage:
            self.usage_meter.apply(usage)
        if generated:
            self._generated(generated)
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

    def _generated(self, samples: list[tuple[Any, ...]]) -> None:
        # The telemetry hook names no alias: generation timing goes to the version's row
        # without one (the pinned row), which every per-version sum includes.
        series: dict[tuple[str, int, str], tuple[list[float], list[float], list[float]]] = {}
        with self._lock:
            for version_id, model, version, source, ttft_ms, gaps, tokens, decode_ms, minute in samples:
                cell = self._cells.get((version_id, minute, source, ""))
                if cell is None:
                    cell = self._cells[(version_id, minute, source, "")] = _cell_new()
                decoded = max(0, tokens - 1)
                _generation_add(cell, ttft_ms, gaps, decoded, decode_ms)
                ttfts, all_gaps, speeds = series.setdefault((model, version, source), ([], [], []))
                ttfts.append(ttft_ms / 1000)
                all_gaps.extend(gap / 1000 for gap in gaps)
                if decoded and decode_ms > 0:
                    speeds.append(decoded / (decode_ms / 1000))
        for (model, version, source), (ttfts, all_gaps, speeds) in series.items():
            children = self._generation_series.get((model, version, source))
            if children is None:
                labels = (model, str(version), source)
                children = self._generation_series[(model, version, source)] = (
                    TTFT.labels(*labels), INTER_TOKEN.labels(*labels), OUTPUT_SPEED.labels(*labels),
                )  # fmt: skip
            histogram_add(children[0], ttfts)
            histogram_add(children[1], all_gaps)
            histogram_add(children[2], speeds)

    def _forked(self) -> None:
        """First record in this process (or after a fork): start afresh, with a thread of our own."""
        with self._lock:
            self._pid = os.getpid()
            self._pending = []
            self._usage_pending = []
            self._generation_pending = []
            self.usage_meter.clear()
            self._cells.clear()
            self._series.clear()
            self._generation_series.clear()
            self._counters.clear()
            self.process = f"{socket.gethostname()}:{self._pid}"[:80]
            self._thread = None
        interval = float(getattr(settings, "METRICS_FLUSH_SECONDS", 5.0))
        if self.background and interval > 0:
            self._thread = threading.Thread(target=self._run, args=(interval,), name="maas-metrics", daemon=True)
            self._thread.start()
            atexit.register(self.flush_quietly)

    def _run(self, interval: float) -> None:
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
        """Merge the recorded cells into this process's MetricBucket and UsageBucket rows; returns rows written."""
        cells = self.take()
        usage = self.usage_meter.take()
        if not cells and not usage:
            return 0
        process = self.process or f"{socket.gethostname()}:{os.getpid()}"
        # Kept for the next flush if the database fails, unless it has been failing for an hour.
        horizon = int(time.time() // 60) - 60
        written = 0
        try:
            if cells:
                written += _cells_write(cells, process)
        except DatabaseError:
            self.restore({key: cell for key, cell in cells.items() if key[1] > horizon})
            self.usage_restore(usage, horizon)
            raise
        try:
            if usage:
                written += usage_write(usage, process)
        except DatabaseError:
            self.usage_restore(usage, horizon)
            raise
        return written

    def usage_restore(self, usage: dict[UsageKey, UsageCell], horizon: int) -> None:
        """Put back usage cells that could not be written (those newer than `horizon`, a minute number)."""
        self.usage_meter.restore({key: cell for key, cell in usage.items() if key[1] > horizon})

    def flush_quietly(self) -> None:
        """Flush at exit: a failure is logged, never raised."""
        try:
            self.flush()
        except Exception:
            logger.warning("could not flush serving metrics at exit", exc_info=True)

    def reset(self) -> None:
        """Drop everything recorded and not yet flushed (tests)."""
        self.take()
        self.usage_meter.take()


# How often the background thread applies recorded samples (Prometheus lags by at most this).
DRAIN_SECONDS = 0.5


def _cell_add(
    cells: dict[Key, Cell], key: Key, status: int, failed: bool, total_ms: float, queue_ms: float, compute_ms: float,
    batch_size: int, payload_bytes: int,
) -> None:  # fmt: skip
    cell = cells.get(key)
    if cell is None:
        cell = cells[key] = _cell_new()
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


def _cell_new() -> Cell:
    return [0, 0, 0.0, 0.0, 0.0, 0, 0, {}, {}, {}, 0, 0.0, {}, 0.0, 0, {}, 0, 0.0]


def _generation_add(cell: Cell, ttft_ms: float, gaps: list[float], decoded: int, decode_ms: float) -> None:
    cell[10] += 1
    cell[11] += ttft_ms
    index = latency_bucket(ttft_ms)
    cell[12][index] = cell[12].get(index, 0) + 1
    if gaps:
        cell[13] += math.fsum(gaps)
        cell[14] += len(gaps)
        hist = cell[15]
        for gap in gaps:
            index = latency_bucket(gap)
            hist[index] = hist.get(index, 0) + 1
    cell[16] += decoded
    cell[17] += decode_ms


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


def buckets_prune() -> int:
    """Delete aggregates older than METRICS_RETENTION_DAYS (Celery beat runs it: monitoring.tasks.metrics_prune)."""
    days = float(getattr(settings, "METRICS_RETENTION_DAYS", 30))
    deleted, _ = MetricBucket.objects.filter(minute__lt=timezone.now() - timedelta(days=days)).delete()
    return deleted


def _cell_merge(into: Cell, other: Cell) -> Cell:
    for i in SUMMED:
        into[i] += other[i]
    for i in HISTOGRAMS:
        for key, count in other[i].items():
            into[i][key] = into[i].get(key, 0) + count
    return into


def _cells_write(cells: dict[Key, Cell], process: str) -> int:
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
            if cell[10]:
                row.generated += cell[10]
                row.ttft_sum_ms += cell[11]
                row.ttft_hist = hist_merge(dict(row.ttft_hist), cell[12])
                row.inter_token_sum_ms += cell[13]
                row.inter_token_count += cell[14]
                row.inter_token_hist = hist_merge(dict(row.inter_token_hist), cell[15])
                row.decode_tokens += cell[16]
                row.decode_sum_ms += cell[17]
            row.save()
            written += 1
    return written


recorder = Recorder()
record = recorder.record
usage = recorder.usage
generation = recorder.generation
