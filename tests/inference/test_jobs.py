"""Batch prediction jobs: running them on the worker task (in-process), cancel, worker death, failures."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch
from django.utils import timezone
from kombu.exceptions import OperationalError

from core.errors import Conflict
from inference import jobs, tasks
from inference.cache import model_cache
from inference.models import BatchJob, JobStatus
from inference.runs import loop
from registry import services
from tests.inference.conftest import (
    LABELS,
    forward,
    jsonl_bytes,
    npz_bytes,
    result_lines,
    result_npz,
    rows,
    run,
    stored_job_files,
    submit,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_model_cache")]


# --- running jobs ---------------------------------------------------------------------------


def test_npz_job_runs_in_chunks_and_matches_a_direct_forward(owner, version, net):
    x = rows(10)
    job = submit(owner, npz_bytes(features=x), chunk_size=3)
    assert (job.status, job.total_rows, job.input_format, job.result_format) == ("queued", 10, "npz", "npz")
    assert job.progress == 0.0
    job = run(job)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert (job.rows_done, job.progress, job.attempts, job.parts) == (10, 100.0, 1, [])
    assert job.started_at and job.finished_at
    result = result_npz(job)
    expected = forward(net, x)
    np.testing.assert_allclose(result["output__0"], expected, rtol=1e-5, atol=1e-5)
    assert result["label"].tolist() == [LABELS[i] for i in expected.argmax(axis=1)]
    # The normalised input and the result remain; the parts are gone.
    assert [path.name for path in stored_job_files()] == ["input.npz", "result.npz"]


def test_jsonl_job_writes_one_line_per_input_with_its_label(owner, version, net):
    x = rows(5, seed=1)
    job = run(submit(owner, jsonl_bytes(x), filename="inputs.jsonl"))
    assert (job.status, job.input_format, job.result_format) == ("succeeded", "jsonl", "jsonl")
    lines = result_lines(job)
    expected = forward(net, x)
    assert len(lines) == 5
    np.testing.assert_allclose(np.array([line["output__0"] for line in lines]), expected, rtol=1e-5, atol=1e-5)
    assert [line["label"] for line in lines] == [LABELS[i] for i in expected.argmax(axis=1)]


def test_result_format_may_differ_from_the_input(owner, version, net):
    x = rows(4)
    job = run(submit(owner, npz_bytes(features=x), result_format="jsonl", alias=None))
    assert job.result_format == "jsonl"
    np.testing.assert_allclose([line["output__0"] for line in result_lines(job)], forward(net, x), atol=1e-5)
    job = run(submit(owner, jsonl_bytes(x), filename="x.jsonl", result_format="npz"))
    np.testing.assert_allclose(result_npz(job)["output__0"], forward(net, x), atol=1e-5)


def test_alias_and_integer_inputs_are_accepted(owner, registered_model, version, net):
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    job = run(submit(owner, npz_bytes(features=x), version=None))
    assert job.version_number == 1
    np.testing.assert_allclose(result_npz(job)["output__0"], forward(net, x.astype(np.float32)), atol=1e-5)


def test_model_without_a_batch_dimension_gets_one_example_at_a_time(owner, ready_version, net):
    ready_version(signature={"inputs": [{"name": "features", "datatype": "FP32", "shape": [4]}]})
    x = rows(6)
    job = run(submit(owner, npz_bytes(features=x), chunk_size=4))
    assert job.status == "succeeded", job.error
    np.testing.assert_allclose(result_npz(job)["output__0"], forward(net, x), atol=1e-5)
    job = run(submit(owner, jsonl_bytes(x[:2]), filename="two.jsonl"))
    assert len(result_lines(job)) == 2


def test_submit_enqueues_on_the_models_queue_after_commit(
    owner, version, monkeypatch, django_capture_on_commit_callbacks
):
    sent = []
    monkeypatch.setattr(tasks.batch_job_run, "apply_async", lambda **kwargs: sent.append(kwargs))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = submit(owner, npz_bytes(features=rows(2)))
    assert sent == []
    callbacks[0]()
    assert sent == [{"args": [str(job.pk)], "queue": "inference"}]


@pytest.mark.celery_eager
def test_eager_submit_runs_the_whole_job(owner, version, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = submit(owner, npz_bytes(features=rows(7)))
    job.refresh_from_db()
    assert job.status == "succeeded", job.error


def test_broker_error_at_enqueue_leaves_the_job_queued_for_the_sweep(
    owner, version, monkeypatch, django_capture_on_commit_callbacks
):
    def refuse(**kwargs: Any) -> None:
        raise OperationalError("Connection refused")

    monkeypatch.setattr(tasks.batch_job_run, "apply_async", refuse)
    with django_capture_on_commit_callbacks(execute=True):
        job = submit(owner, npz_bytes(features=rows(2)))
    job.refresh_from_db()
    # Accepted work is not lost: the sweep on beat sends it again (tests/inference/test_runs.py).
    assert (job.status, job.heartbeat_at, job.error) == ("queued", None, "")


def test_a_long_job_hands_over_to_fresh_tasks_and_resumes_from_saved_parts(owner, version, net, monkeypatch):
    monkeypatch.setattr(loop, "segment_seconds", lambda: 0.0)
    x = rows(10)
    job = submit(owner, npz_bytes(features=x), chunk_size=4)
    job = run(job)
    assert (job.status, job.rows_saved, job.rows_done, job.attempts, len(job.parts)) == ("queued", 4, 4, 0, 1)
    job = run(job)
    assert (job.status, job.rows_saved, len(job.parts)) == ("queued", 8, 2)
    job = run(job)
    assert job.status == "succeeded"
    np.testing.assert_allclose(result_npz(job)["output__0"], forward(net, x), atol=1e-5)
    assert [path.name for path in stored_job_files()] == ["input.npz", "result.npz"]


# --- cancel, worker death, failures ---------------------------------------------------------


def test_cancel_a_queued_job_at_once(owner, version):
    job = submit(owner, npz_bytes(features=rows(3)))
    job = jobs.job_cancel(actor=owner, job=job)
    assert (job.status, job.cancel_requested) == ("cancelled", True)
    assert job.finished_at is not None
    assert run(job).status == "cancelled"  # the message that still arrives does nothing
    assert not job.result_path
    with pytest.raises(Conflict, match="already cancelled"):
        jobs.job_cancel(actor=owner, job=job)


def test_cancel_a_running_job_stops_it_between_chunks(owner, version, monkeypatch):
    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    job = submit(owner, npz_bytes(features=rows(20)), chunk_size=2)
    loaded = model_cache().get(job.version_id)
    original, calls = loaded.predict, []

    def predict(inputs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            running = BatchJob.objects.get(pk=job.pk)
            assert running.status == "running"
            assert jobs.job_cancel(actor=owner, job=running).status == "running"  # running: only flagged
        return original(inputs)

    monkeypatch.setattr(loaded, "predict", predict)
    job = run(job)
    assert job.status == "cancelled"
    assert 0 < job.rows_done < 20 and len(calls) < 10
    assert not job.result_path
    assert [path.name for path in stored_job_files()] == ["input.npz"]


def test_a_job_whose_worker_died_is_resumed_then_failed_after_three_attempts(owner, version):
    job = submit(owner, npz_bytes(features=rows(3)))
    # A redelivered message finds the job running: one interrupted attempt so far.
    BatchJob.objects.filter(pk=job.pk).update(status="running", attempts=1)
    job = run(job)
    assert (job.status, job.attempts) == ("succeeded", 2)

    job = submit(owner, npz_bytes(features=rows(3)))
    BatchJob.objects.filter(pk=job.pk).update(status="running", attempts=3)
    job = run(job)
    assert job.status == "failed"
    assert "interrupted 3 times" in job.error and "not retried" in job.error


def test_a_running_job_nobody_reports_on_is_failed_not_left_running(owner, version):
    # At its retry limit (below it the sweep queues it again: tests/inference/test_runs.py).
    job = submit(owner, npz_bytes(features=rows(3)))
    BatchJob.objects.filter(pk=job.pk).update(status="running", heartbeat_at=timezone.now() - timedelta(days=1),
                                              attempts=3)  # fmt: skip
    fresh = submit(owner, npz_bytes(features=rows(3)))
    BatchJob.objects.filter(pk=fresh.pk).update(status="running", heartbeat_at=timezone.now())
    assert jobs.jobs_expire_stale() == 1
    job.refresh_from_db()
    assert job.status == "failed" and "stopped reporting" in job.error
    assert BatchJob.objects.get(pk=fresh.pk).status == "running"


def test_model_failure_fails_the_job_naming_the_rows(owner, version, monkeypatch):
    job = submit(owner, npz_bytes(features=rows(6)), chunk_size=4)
    loaded = model_cache().get(job.version_id)

    def broken(inputs: Any) -> Any:
        raise RuntimeError("shape mismatch inside the model")

    monkeypatch.setattr(loaded, "predict", broken)
    job = run(job)
    assert job.status == "failed"
    assert job.error.startswith("Rows 1 to 4: the model failed: RuntimeError: shape mismatch")


def test_version_deleted_before_the_job_ran(owner, version):
    job = submit(owner, npz_bytes(features=rows(3)))
    services.version_delete(actor=owner, version=version)
    job = run(job)
    assert (job.status, job.version_id, job.model_name, job.version_number) == ("failed", None, "iris", 1)
    assert "deleted" in job.error


def test_archived_version_fails_with_the_reason(owner, version):
    job = submit(owner, npz_bytes(features=rows(3)))
    services.version_archive(actor=owner, version=version)
    job = run(job)
    assert job.status == "failed" and "archived" in job.error


@pytest.mark.celery_eager
def test_a_job_that_runs_out_of_memory_is_retried_then_failed_saying_so(
    owner, version, monkeypatch, django_capture_on_commit_callbacks
):
    loaded = model_cache().get(version.pk)
    attempts: list[int] = []

    def greedy(inputs: Any, parameters: Any = None) -> Any:
        attempts.append(1)
        # A real allocation the allocator refuses (some 40 TB), as a model too big for the box would.
        torch.empty(10**13, dtype=torch.float32)
        raise AssertionError("the allocation above must fail")

    monkeypatch.setattr(loaded, "predict", greedy)
    with django_capture_on_commit_callbacks(execute=True):
        job = submit(owner, npz_bytes(features=rows(4)))
    job.refresh_from_db()
    assert (job.status, job.attempts, len(attempts)) == ("failed", 3, 3)
    assert "ran out of memory" in job.error and "3 of 3 attempts" in job.error
    assert "can't allocate memory" in job.error
