"""Tracked runs (batch jobs, evaluations) survive worker and broker faults without a person.

Each test has a broker (a Redis on TCP), web process, workers and Celery beat of its own,
with heartbeat and sweep intervals shortened to seconds; the database is the run's test
database (SQLite or PostgreSQL). Faults are real: kill -9 of a worker's process group, a
Redis stopped and started without its data.
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from kombu import Connection

from accounts import services as token_services
from inference import validation
from inference.models import BatchJob
from monitoring import services as monitoring_services
from monitoring.models import EvaluationRun
from portal import demo
from registry import services
from registry.models import ModelVersion
from tests.conftest import upload_file
from tests.integration.faults import Stack, start_beat
from tests.run_environment import run_dir
from tests.worker import Processes, redis_start, until

# Every process of these tests uses a broker of the test's own: CI's RabbitMQ pass would repeat them as they are.
pytestmark = [pytest.mark.integration, pytest.mark.private_broker, pytest.mark.django_db(transaction=True)]

SIGNATURE = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
             "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]}  # fmt: skip
# Matrix products per row: about 0.2 s of one core here, so a run of ROWS rows lasts seconds.
# Enough work per row that a job or evaluation is still running when the test kills or probes
# its worker, on a quiet machine too (10,000 finished 30 rows before the probe there).
SPIN = 60_000
ROWS = 30
# Runs beat every 0.3 s and are stale after 2 s of silence; the sweep runs every second.
FAST_RECOVERY = {"RUNS_HEARTBEAT_SECONDS": "0.3", "RUNS_STALE_SECONDS": "2", "RUNS_SWEEP_SECONDS": "1",
                 "RUNS_RESEND_SECONDS": "3"}  # fmt: skip
PATIENCE = 120


class Spinning(torch.nn.Module):
    """A 3-class classifier that spins for as many matrix products as its rows' first features add up to."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(64) * 0.5)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spin = torch.zeros(1, 64)
        for _ in range(int(x[:, 0].sum().item())):
            spin = torch.tanh(spin @ self.weight)
        return self.head(x) + spin[:, :1] * 0.0


@pytest.fixture
def spinning(owner: Any, tmp_path: Path) -> ModelVersion:
    model = services.model_create(actor=owner, name="spin")
    version = upload_file(owner, model, demo.save_torchscript(Spinning(), tmp_path / "spin.pt"), signature=SIGNATURE,
                          enqueue=False)  # fmt: skip
    assert validation.version_validate(version.pk) == "ready"
    services.alias_set(actor=owner, model=model, name="production", version_number=version.version)
    return version


def submit_job(stack: Stack, rows: int = ROWS) -> requests.Response:
    return stack.post("/api/v1/jobs/", files={"file": ("x.npz", _features(rows))},
                      data={"model": "spin", "chunk_size": "1"})  # fmt: skip


def _features(rows: int) -> bytes:
    features = np.ones((rows, 4), dtype=np.float32)
    features[:, 0] = SPIN
    buffer = io.BytesIO()
    np.savez(buffer, features=features)
    return buffer.getvalue()


@pytest.fixture
def stack(service_environment: dict[str, str], owner: Any, processes: Processes, request: Any) -> Stack:
    token = token_services.token_create(user=owner, name="recovery")[1]
    directory = run_dir() / f"recovery-{request.node.name[:40]}"
    return Stack(processes, service_environment | FAST_RECOVERY, directory, token)


def test_a_job_whose_worker_group_is_killed_is_taken_up_by_a_restarted_worker_within_a_minute(stack, spinning):
    start_beat(stack.processes, stack.environment, stack.directory)
    first = stack.worker("worker-1")
    submitted = submit_job(stack)
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    until(lambda: BatchJob.objects.get(pk=job_id).rows_done >= 2, PATIENCE, "the job ran", first.log)

    os.killpg(first.process.pid, signal.SIGKILL)  # the whole worker: main process and pool
    killed = time.monotonic()
    assert BatchJob.objects.get(pk=job_id).status == "running"
    second = stack.worker("worker-2")
    until(lambda: BatchJob.objects.get(pk=job_id).attempts == 2, PATIENCE, "the job was taken up again", second.log)
    taken_up = time.monotonic() - killed
    until(lambda: BatchJob.objects.get(pk=job_id).status != "running", PATIENCE, "the job ended", second.log)
    job = BatchJob.objects.get(pk=job_id)
    assert (job.status, job.attempts, job.rows_done) == ("succeeded", 2, ROWS), job.error
    print(f"taken up by the restarted worker {taken_up:.1f}s after the kill (worker start included)")
    assert taken_up < 60


def test_a_short_visibility_timeout_does_not_run_an_evaluation_twice_while_its_worker_lives(stack, spinning, owner):
    stack.environment["CELERY_VISIBILITY_TIMEOUT"] = "1"
    # Two pool processes: a redelivered message would be taken at once by the idle one.
    worker = stack.worker("worker", concurrency=2)
    dataset_create(owner, spinning)
    started = stack.post("/api/v1/evaluations/", json={"model": "spin", "version": 1, "dataset": "d",
                                                       "batch_size": 1})  # fmt: skip
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    until(lambda: EvaluationRun.objects.get(pk=run_id).rows_done >= 2, PATIENCE, "the evaluation ran", worker.log)

    # The broker's own restore of messages unacknowledged past the visibility timeout (the
    # worker's transport runs it on a timer of its own; here it runs now, past the 1 s timeout).
    task = _task_of(worker, run_id)

    def redelivered() -> bool:
        with Connection(stack.redis_url, transport_options={"visibility_timeout": 1}) as connection:
            connection.default_channel.qos.restore_visible(num=100, interval=1)
        time.sleep(0.3)
        return worker.output().count(f"evaluation_run[{task}] received") == 2

    until(redelivered, 30, "the message was delivered again", worker.log)
    assert EvaluationRun.objects.get(pk=run_id).status == "running"
    until(lambda: EvaluationRun.objects.get(pk=run_id).status != "running", PATIENCE, "the run ended", worker.log)
    run = EvaluationRun.objects.get(pk=run_id)
    assert (run.status, run.attempts) == ("succeeded", 1), run.error
    assert "not claimed again" in worker.output()


def dataset_create(owner: Any, version: ModelVersion) -> None:
    """A labelled dataset "d" of ROWS slow rows for the model."""
    features = np.ones((ROWS, 4), dtype=np.float32)
    features[:, 0] = SPIN
    data = io.BytesIO()
    np.savez(data, features=features, labels=np.zeros(ROWS, dtype=np.int64))
    data.seek(0)
    monitoring_services.dataset_create(actor=owner, model=version.model, name="d", filename="d.npz", file=data)


def _task_of(worker: Any, run_id: str) -> str:
    """The Celery task id of the run's message, from the worker's log."""
    for line in worker.output().splitlines():
        if "evaluation_run[" in line and " received" in line:
            return line.split("evaluation_run[", 1)[1].split("]", 1)[0]
    return "?"


def test_a_broker_outage_refuses_submissions_at_once_and_a_job_queued_across_a_restart_still_runs(
    stack, spinning, model_files, owner
):
    dataset_create(owner, spinning)
    stack.processes.stop(stack.redis)
    time.sleep(1.2)  # past the web process's reuse of its last good broker check
    jobs = BatchJob.objects.count()
    versions = ModelVersion.objects.count()
    for refused in (
        lambda: submit_job(stack, rows=3),
        lambda: stack.post("/api/v1/models/spin/versions/", files={"file": ("m.pt", model_files["torchscript"]
                                                                            .read_bytes())},
                           data={"signature": '{"inputs": [{"name": "features", "datatype": "FP32", '
                                 '"shape": [-1, 4]}]}'}),
        lambda: stack.post("/api/v1/evaluations/", json={"model": "spin", "version": 1, "dataset": "d"}),
    ):  # fmt: skip
        began = time.monotonic()
        answer = refused()
        elapsed = time.monotonic() - began
        assert answer.status_code == 503 and "broker" in answer.json()["error"], answer.text
        assert answer.headers["Retry-After"]
        assert elapsed < 5, f"refused after {elapsed:.1f}s"
    # Nothing was stored: no job, no version, no evaluation.
    counts = (BatchJob.objects.count(), ModelVersion.objects.count(), EvaluationRun.objects.count())
    assert counts == (jobs, versions, 0)

    # The broker returns; a job is accepted while no worker runs, then the broker restarts
    # empty (no persistence): the queued job's message is gone.
    stack.redis, _ = redis_start(stack.processes, stack.directory / "redis", unix_socket=False, port=stack.port)
    submitted = submit_job(stack, rows=3)
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    stack.redis_restart()
    start_beat(stack.processes, stack.environment, stack.directory)
    worker = stack.worker("worker")
    until(lambda: BatchJob.objects.get(pk=job_id).status == "succeeded", PATIENCE, "the job ran", worker.log)
