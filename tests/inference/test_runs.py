"""The tracked-run engine on both kinds of runs: claim, fail, retry limit, cancel, stale sweep,
the chunked loop and the one .npz reader."""

from __future__ import annotations

import io
import os
import time
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from django.conf import settings
from django.utils import timezone

from core.errors import Conflict, InvalidInput, PayloadTooLarge
from inference.models import BatchJob
from inference.runs import arrays, lifecycle, loop
from inference.runs.lifecycle import Claim, run_cancel, run_claim, run_enqueue, stale_expire, stale_expire_all
from inference.runs.loop import ChunkedWork, Outputs, forward, work_run
from inference.runs.models import TrackedRun
from monitoring.models import EvaluationDataset, EvaluationRun
from registry.artifacts import artifact_storage

pytestmark = pytest.mark.django_db

KINDS = ["job", "evaluation"]


@pytest.fixture
def make_run(owner: Any, ready_version: Any) -> Any:
    """A queued run of either kind, as a row only (the engine does not look at its inputs)."""
    version = ready_version()
    dataset = EvaluationDataset.objects.create(
        model=version.model, name="d", task="classification", source_format="npz", path="evaluation/d.npz",
        rows=6, size_bytes=1,
    )  # fmt: skip

    def make(kind: str, total_rows: int = 6) -> TrackedRun:
        if kind == "job":
            return BatchJob.objects.create(
                version=version, model_name="iris", version_number=1, created_by=owner, input_format="npz",
                result_format="npz", input_path="jobs/x/input.npz", total_rows=total_rows, chunk_size=2,
            )  # fmt: skip
        return EvaluationRun.objects.create(
            version=version, dataset=dataset, batch_size=2, total_rows=total_rows, created_by=owner
        )

    return make


def fresh(run: TrackedRun) -> TrackedRun:
    return type(run)._default_manager.get(pk=run.pk)


def stored(path: str) -> str:
    return artifact_storage().save(path, io.BytesIO(b"part"))


# --- claim, fail, retry limit -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_claim_runs_the_run_and_a_redelivery_supersedes_it(make_run, kind):
    run = make_run(kind)
    first = run_claim(type(run), run.pk)
    assert isinstance(first, Claim)
    row = fresh(run)
    assert (row.status, row.attempts, row.rows_done) == ("running", 1, 0)
    assert row.started_at is not None and row.worker.endswith(f":{os.getpid()}")
    assert first.heartbeat(2) and fresh(run).rows_done == 2
    # The broker redelivers the message (the first worker looked dead): a second claim.
    second = run_claim(type(run), run.pk)
    assert isinstance(second, Claim) and second.attempt == 2
    # The first claim can no longer write: not progress, not a failure.
    assert not first.heartbeat(4)
    assert first.fail("late failure of a superseded claim") == "running"
    assert (fresh(run).status, fresh(run).error) == ("running", "")
    assert second.fail("x" * 5000) == "failed"
    row = fresh(run)
    assert row.status == "failed" and len(row.error) == lifecycle.ERROR_CHARS and row.finished_at is not None
    # An ended run is not claimed again: the message that still arrives does nothing.
    assert run_claim(type(run), run.pk) == "failed"


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_claimed_too_often_is_failed_naming_the_limit(make_run, kind):
    run = make_run(kind)
    type(run)._default_manager.filter(pk=run.pk).update(status="running", attempts=lifecycle.MAX_ATTEMPTS)
    assert run_claim(type(run), run.pk) == "failed"
    row = fresh(run)
    assert row.error.startswith(f"The {row.noun} was interrupted 3 times") and "not retried" in row.error
    assert row.attempts == lifecycle.MAX_ATTEMPTS  # no claim was made
    assert run_claim(type(run), "00000000-0000-0000-0000-000000000000") == "missing"


def test_a_job_whose_version_is_gone_is_refused_at_claim_and_its_parts_deleted(
    make_run, django_capture_on_commit_callbacks
):
    job = make_run("job")
    part = stored(f"{job.storage_prefix}/parts/000000000000.npz")
    BatchJob.objects.filter(pk=job.pk).update(version=None, parts=[part], rows_saved=2)
    with django_capture_on_commit_callbacks(execute=True):
        assert run_claim(BatchJob, job.pk) == "failed"
    row = BatchJob.objects.get(pk=job.pk)
    assert "version was deleted" in row.error and row.parts == []
    assert not artifact_storage().exists(part)


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_a_queued_run_at_once_and_a_running_one_at_its_next_heartbeat(make_run, kind):
    queued = make_run(kind)
    assert run_cancel(type(queued), queued.pk).status == "cancelled"
    assert run_claim(type(queued), queued.pk) == "cancelled"
    with pytest.raises(Conflict, match=f"already cancelled; only queued or running {queued.noun}s"):
        run_cancel(type(queued), queued.pk)

    running = make_run(kind)
    claim = run_claim(type(running), running.pk)
    assert isinstance(claim, Claim)
    assert run_cancel(type(running), running.pk).status == "running"  # only flagged
    assert not claim.heartbeat(2)
    assert claim.stopped() == "cancelled"
    assert fresh(running).status == "cancelled"


def test_cancelling_a_handed_over_job_deletes_its_saved_parts(make_run, django_capture_on_commit_callbacks):
    job = make_run("job")
    part = stored(f"{job.storage_prefix}/parts/000000000000.npz")
    BatchJob.objects.filter(pk=job.pk).update(parts=[part], rows_saved=2)  # queued again after a hand-over
    with django_capture_on_commit_callbacks(execute=True):
        assert run_cancel(BatchJob, job.pk).status == "cancelled"
    assert BatchJob.objects.get(pk=job.pk).parts == [] and not artifact_storage().exists(part)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ids the sweep sends to a worker again (instead of a broker)."""
    ids: list[Any] = []
    for model in (BatchJob, EvaluationRun):
        monkeypatch.setitem(lifecycle._enqueuers, model, ids.append)
    return ids


@pytest.mark.parametrize("kind", KINDS)
def test_a_broker_that_refuses_the_message_leaves_the_run_queued_for_the_sweep_to_send(make_run, kind, sent):
    run = make_run(kind)

    class Refusing:
        def apply_async(self, **kwargs: Any) -> None:
            raise ConnectionRefusedError("Connection refused")

    run_enqueue(run, Refusing(), "inference")  # type: ignore[arg-type]
    row = fresh(run)
    assert (row.status, row.heartbeat_at, row.error) == ("queued", None, "")
    assert stale_expire(type(run)) == 0  # just submitted: its own on_commit may still be sending it
    type(run)._default_manager.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=1))
    assert stale_expire(type(run)) == 1 and sent == [run.pk]


@pytest.mark.parametrize("kind", KINDS)
def test_a_sent_run_is_sent_again_only_after_the_resend_interval(make_run, kind, sent):
    run = make_run(kind)

    class Taking:
        def apply_async(self, **kwargs: Any) -> None:
            pass

    run_enqueue(run, Taking(), "inference")  # type: ignore[arg-type]
    assert fresh(run).heartbeat_at is not None
    type(run)._default_manager.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(days=1))
    assert stale_expire(type(run)) == 0 and sent == []
    sent_at = timezone.now() - timedelta(seconds=settings.RUNS_RESEND_SECONDS + 1)
    type(run)._default_manager.filter(pk=run.pk).update(heartbeat_at=sent_at)
    assert stale_expire(type(run)) == 1 and sent == [run.pk]


@pytest.mark.parametrize("kind", KINDS)
def test_a_redelivery_while_the_holder_still_beats_is_not_run_twice(make_run, kind):
    run = make_run(kind)
    model = type(run)
    # Held by a process of another host whose heartbeat is fresh: the broker's copy is a duplicate.
    model._default_manager.filter(pk=run.pk).update(
        status="running", attempts=1, heartbeat_at=timezone.now(), worker="gpu-9:42"
    )
    assert run_claim(model, run.pk) == "running"
    assert fresh(run).attempts == 1
    # Held by a process of this host that is gone: claimed at once, not after the sweep.
    model._default_manager.filter(pk=run.pk).update(worker=f"{lifecycle.socket.gethostname()}:999999999")
    claim = run_claim(model, run.pk)
    assert isinstance(claim, Claim) and claim.attempt == 2


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_thread_keeps_a_held_run_fresh_while_its_work_runs(make_run, settings):
    # Committed rows: the heartbeat thread has its own database connection.
    settings.RUNS_HEARTBEAT_SECONDS = 0.05
    run = make_run("job")
    claim = run_claim(BatchJob, run.pk)
    assert isinstance(claim, Claim)
    past = timezone.now() - timedelta(minutes=5)
    BatchJob.objects.filter(pk=run.pk).update(heartbeat_at=past)
    with lifecycle.claim_heartbeat(claim):
        deadline = time.monotonic() + 10
        while fresh(run).heartbeat_at == past and time.monotonic() < deadline:
            time.sleep(0.05)
    assert fresh(run).heartbeat_at > past
    assert claim.fail("done") == "failed"
    assert not claim.alive()  # the claim is over: a late beat changes nothing


# --- stale sweep ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_sweep_queues_again_only_running_runs_whose_worker_went_silent(make_run, kind, sent):
    model = type(make_run(kind))
    silent, recent, queued = make_run(kind), make_run(kind), make_run(kind)
    a_minute_ago = timezone.now() - timedelta(minutes=1)
    model._default_manager.filter(pk=silent.pk).update(
        status="running", heartbeat_at=a_minute_ago, worker="gpu-1:7", attempts=1
    )
    model._default_manager.filter(pk=recent.pk).update(status="running", heartbeat_at=timezone.now(), attempts=1)
    model._default_manager.filter(pk=queued.pk).update(heartbeat_at=timezone.now())
    assert stale_expire(model) == 1 and sent == [silent.pk]
    row = fresh(silent)
    assert (row.status, row.attempts, row.heartbeat_at, row.error) == ("queued", 1, None, "")
    assert fresh(recent).status == "running" and fresh(queued).status == "queued"
    assert stale_expire(model) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_the_sweep_fails_a_silent_run_at_its_retry_limit_naming_the_worker(make_run, kind, sent):
    run = make_run(kind)
    model = type(run)
    model._default_manager.filter(pk=run.pk).update(
        status="running", heartbeat_at=timezone.now() - timedelta(days=1), worker="gpu-1:7",
        attempts=lifecycle.MAX_ATTEMPTS,
    )  # fmt: skip
    assert stale_expire(model) == 1 and sent == []
    row = fresh(run)
    assert row.status == "failed" and row.finished_at is not None
    assert "interrupted 3 times" in row.error and "(gpu-1:7) stopped reporting" in row.error
    assert row.retry_hint in row.error


def test_one_sweep_covers_every_kind_and_deletes_a_failed_jobs_parts(make_run, sent):
    job, evaluation = make_run("job"), make_run("evaluation")
    part = stored(f"{job.storage_prefix}/parts/000000000000.npz")
    long_ago = timezone.now() - timedelta(days=1)
    BatchJob.objects.filter(pk=job.pk).update(status="running", heartbeat_at=long_ago, parts=[part], rows_saved=2,
                                              attempts=lifecycle.MAX_ATTEMPTS)  # fmt: skip
    EvaluationRun.objects.filter(pk=evaluation.pk).update(status="running", heartbeat_at=long_ago, attempts=1)
    assert stale_expire_all() == {"inference.BatchJob": 1, "inference.ConversionRun": 0, "monitoring.EvaluationRun": 1}
    assert (fresh(job).status, fresh(evaluation).status) == ("failed", "queued")
    assert fresh(job).parts == [] and not artifact_storage().exists(part)
    assert sent == [evaluation.pk]


def test_the_stale_cutoff_is_the_heartbeat_silence_setting(settings):
    settings.RUNS_STALE_SECONDS = 12
    silence = timezone.now() - lifecycle.stale_cutoff()
    assert silence.total_seconds() == pytest.approx(12, abs=1)


# --- the chunked loop -----------------------------------------------------------------------------


class Squares(ChunkedWork[Any]):
    """Rows are numbers; a chunk squares them. Records what the engine asked of it."""

    seen: ClassVar[list[tuple[int, int]]] = []
    broken_at: ClassVar[int | None] = None

    def start(self) -> None:
        self.step = 2

    def chunk(self, start: int, stop: int) -> Outputs:
        self.seen.append((start, stop))
        if self.broken_at is not None and start <= self.broken_at < stop:
            raise RuntimeError("bad row")
        rows = np.arange(start, stop)
        return {"square": rows**2, "row": rows}

    def finish(self, outputs: Outputs) -> dict[str, Any]:
        assert outputs["row"].tolist() == list(range(self.run.total_rows))
        return {"metrics": {"sum": int(outputs["square"].sum())}}


class ResumableSquares(Squares):
    resumable = True
    sent: ClassVar[list[Any]] = []

    def finish(self, outputs: Outputs) -> dict[str, Any]:
        assert outputs["row"].tolist() == list(range(self.run.total_rows))
        return {"result_path": "jobs/r.npz"}

    def enqueue(self) -> None:
        self.sent.append(self.run.pk)


@pytest.fixture(autouse=True)
def _fresh_squares() -> None:
    Squares.seen.clear()
    Squares.broken_at = None
    ResumableSquares.sent.clear()


def test_the_loop_feeds_every_row_once_in_chunks_and_stores_what_the_work_returns(make_run, monkeypatch):
    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    run = make_run("evaluation", total_rows=5)
    assert work_run(EvaluationRun, run.pk, Squares) == "succeeded"
    assert Squares.seen == [(0, 2), (2, 4), (4, 5)]
    row = fresh(run)
    assert (row.status, row.rows_done, row.progress, row.metrics) == ("succeeded", 5, 100.0, {"sum": 30})


def test_a_failing_chunk_fails_the_run_naming_its_rows(make_run):
    run = make_run("evaluation", total_rows=6)
    Squares.broken_at = 3
    assert work_run(EvaluationRun, run.pk, Squares) == "failed"
    assert Squares.seen == [(0, 2), (2, 4)]
    assert fresh(run).error == "Rows 3 to 4: the model failed: RuntimeError: bad row"


def test_a_failing_finish_and_a_failing_start_fail_the_run_saying_which(make_run, monkeypatch):
    run = make_run("evaluation")
    monkeypatch.setattr(Squares, "finish", lambda self, outputs: 1 / 0)
    assert work_run(EvaluationRun, run.pk, Squares) == "failed"
    assert fresh(run).error.startswith("The outputs could not be saved: ZeroDivisionError")

    run = make_run("evaluation")
    monkeypatch.setattr(Squares, "start", lambda self: Path("/nonexistent/input.npz").read_bytes())
    assert work_run(EvaluationRun, run.pk, Squares) == "failed"
    assert fresh(run).error.startswith("The evaluation could not start: FileNotFoundError")


def test_a_resumable_run_hands_over_and_the_next_task_resumes_from_the_saved_part(
    make_run, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(loop, "segment_seconds", lambda: 0.0)
    job = make_run("job", total_rows=5)
    with django_capture_on_commit_callbacks(execute=True):
        assert work_run(BatchJob, job.pk, ResumableSquares) == "queued"
    row = BatchJob.objects.get(pk=job.pk)
    assert (row.status, row.rows_saved, row.attempts, len(row.parts)) == ("queued", 2, 0, 1)
    assert ResumableSquares.sent == [job.pk]
    monkeypatch.setattr(loop, "segment_seconds", lambda: 3600.0)
    assert work_run(BatchJob, job.pk, ResumableSquares) == "succeeded"
    # Rows 0-1 ran once, in the first task; the second started at row 2.
    assert Squares.seen == [(0, 2), (2, 4), (4, 5)]
    row = BatchJob.objects.get(pk=job.pk)
    assert (row.result_path, row.parts, row.rows_done) == ("jobs/r.npz", [], 5)
    assert not list((Path(settings.STORAGES["artifacts"]["OPTIONS"]["location"]) / "jobs").rglob("*.npz"))


def test_a_run_cancelled_mid_loop_stops_between_chunks(make_run, monkeypatch):
    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    run = make_run("evaluation", total_rows=20)

    class CancelledAtTheSecondChunk(Squares):
        def chunk(self, start: int, stop: int) -> Outputs:
            if start == 2:
                run_cancel(EvaluationRun, self.run.pk)
            return super().chunk(start, stop)

    assert work_run(EvaluationRun, run.pk, CancelledAtTheSecondChunk) == "cancelled"
    assert Squares.seen == [(0, 2), (2, 4)]
    assert fresh(run).rows_done == 2


class FakeModel:
    """predict() like LoadedModel's: [(name, datatype, array)], optionally the wrong number of rows."""

    def __init__(self, rows_off: int = 0) -> None:
        self.rows_off = rows_off

    def predict(self, inputs: dict[str, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
        x = inputs["x"]
        doubled = x * 2 if self.rows_off == 0 else np.concatenate([x, x])[: len(x) + self.rows_off]
        return [("double", "FP32", doubled), ("total", "FP32", x.sum(axis=-1))]


def test_forward_batched_unbatched_and_a_model_that_loses_rows():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    batched = forward(FakeModel(), {"x": x}, 1, 4, batched=True)
    assert list(batched) == ["double", "total"]
    np.testing.assert_array_equal(batched["double"], x[1:4] * 2)
    unbatched = forward(FakeModel(), {"x": x}, 1, 4, batched=False)  # one row per predict, stacked
    np.testing.assert_array_equal(unbatched["total"], x[1:4].sum(axis=-1))
    with pytest.raises(ValueError, match=r"output 'double' has shape \[4, 2\] for 3 input rows"):
        forward(FakeModel(rows_off=1), {"x": x}, 1, 4, batched=True)


# --- the one .npz reader --------------------------------------------------------------------------


def npz(**named: Any) -> io.BytesIO:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **named)
    buffer.seek(0)
    return buffer


def test_the_npz_reader_refuses_an_archive_that_expands_past_its_limit_before_reading_it():
    bomb = npz(zeros=np.zeros(100_000, dtype=np.uint8))  # 100 kB of zeros, compressed to ~100 bytes
    assert len(bomb.getvalue()) < 1_000
    with pytest.raises(PayloadTooLarge, match="expands to"):
        arrays.npz_arrays(bomb, upload_limit=100_000 // arrays.NPZ_EXPANSION - 1)
    bomb.seek(0)
    assert arrays.npz_arrays(bomb, upload_limit=100_000)["zeros"].shape == (100_000,)


def test_the_npz_reader_never_unpickles_and_names_a_corrupt_file():
    with pytest.raises(InvalidInput, match="object array"):
        arrays.npz_arrays(npz(x=np.array([{"a": 1}], dtype=object)), upload_limit=10_000)
    with pytest.raises(InvalidInput, match=r"not a readable \.npz"):
        arrays.npz_arrays(io.BytesIO(b"PK\x03\x04 not really"), upload_limit=10_000)
    truncated = io.BytesIO()
    with zipfile.ZipFile(truncated, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY garbage")
    truncated.seek(0)
    with pytest.raises(InvalidInput, match="'x' is not a readable array"):
        arrays.npz_arrays(truncated, upload_limit=10_000)
