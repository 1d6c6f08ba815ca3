"""Serving metrics survive a database that refuses the flush: kept, and written once it is back."""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import DatabaseError, OperationalError, connection

from monitoring import metrics
from monitoring.metrics import recording
from monitoring.models import MetricBucket

pytestmark = pytest.mark.django_db

TABLE = MetricBucket._meta.db_table


@contextmanager
def metric_writes_refused() -> Iterator[list[str]]:
    """The database refuses every read and write of the aggregates table (as a server that went away would).

    Deletes (the hourly retention prune) still pass, so the failure is the flush's own.
    """
    refused: list[str] = []

    def refuse(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if TABLE in sql and not sql.lstrip().upper().startswith("DELETE"):
            refused.append(sql)
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse):
        yield refused


def _record(version: Any, n: int, *, status: int = 200, ms: float = 3.0) -> None:
    for _ in range(n):
        metrics.recorder.record(version_id=version.pk, model=version.model.name, version=version.version,
                                source="v2", alias="production", status=status, total_ms=ms, queue_ms=1.0,
                                compute_ms=1.5, batch_size=2, payload_bytes=100)  # fmt: skip


@pytest.fixture
def version(ready_version: Any) -> Any:
    made = ready_version()
    metrics.recorder.reset()
    yield made
    metrics.recorder.reset()


def test_a_flush_the_database_refuses_keeps_its_samples_for_the_next_flush(version):
    _record(version, 5)
    with metric_writes_refused() as refused, pytest.raises(DatabaseError):
        metrics.recorder.flush()
    assert refused, "the flush reached the database"
    assert not MetricBucket.objects.exists()

    # More traffic while the database is away, then it returns: everything is written, once.
    _record(version, 3, status=503, ms=30.0)
    assert metrics.recorder.flush() == 1
    row = MetricBucket.objects.get(version=version)
    assert (row.count, row.errors, row.payload_bytes, row.batch_size_sum) == (8, 3, 800, 10)
    assert row.status_counts == {"200": 5, "503": 3}
    assert sum(row.latency_hist.values()) == 8
    assert row.latency_sum_ms == pytest.approx(5 * 3.0 + 3 * 30.0)
    assert metrics.recorder.flush() == 0


def test_repeated_failures_lose_nothing_and_count_nothing_twice(version):
    for _ in range(3):
        _record(version, 2)
        with metric_writes_refused(), pytest.raises(DatabaseError):
            metrics.recorder.flush()
    assert metrics.recorder.flush() == 1
    assert MetricBucket.objects.get(version=version).count == 6


def test_a_failed_flush_merges_into_a_row_written_before_the_outage(version):
    _record(version, 4)
    assert metrics.recorder.flush() == 1
    _record(version, 2)
    with metric_writes_refused(), pytest.raises(DatabaseError):
        metrics.recorder.flush()
    _record(version, 1)
    metrics.recorder.flush()
    assert MetricBucket.objects.get(version=version).count == 7


def test_samples_older_than_an_hour_are_dropped_when_a_flush_fails(version, monkeypatch):
    # Two hours ago, by the recorder's clock only.
    past = types.SimpleNamespace(**{name: getattr(time, name) for name in ("monotonic", "perf_counter", "sleep")})
    past.time = lambda: time.time() - 2 * 3600
    monkeypatch.setattr(recording, "time", past)
    _record(version, 4)
    monkeypatch.undo()
    _record(version, 1)
    with metric_writes_refused(), pytest.raises(DatabaseError):
        metrics.recorder.flush()
    # Only the recent minute was kept: an outage cannot grow the backlog without bound.
    assert metrics.recorder.flush() == 1
    assert MetricBucket.objects.get(version=version).count == 1
