"""Issue 12, for tracked runs (real worker, real broker, real HTTP): a batch job and an
evaluation of a model that reads the portal's secret run in the same sandbox as predictions
(point 1), and a job whose model runs out of memory is retried, then failed saying so (point 3).

The thief's runs fail with the refused read ("Permission denied"), their records hold nothing
of the secret; the greedy model's job fails after its attempts naming the memory, and the
worker goes on. Runs on both backends and on the
RabbitMQ pass (the runs are Celery tasks on the configured broker).
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
import pytest
import requests

from monitoring import services as monitoring_services
from tests.integration.thieves import SECRET, Greedy, ReadsFile, served

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _settled(gateway_url: str, headers: dict[str, str], path: str, timeout: float = 120) -> dict[str, Any]:
    """The run at `path` once it is neither queued nor running."""
    deadline = time.monotonic() + timeout
    while True:
        body = requests.get(f"{gateway_url}{path}", headers=headers, timeout=10).json()
        if body["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.3)


def test_a_batch_job_and_an_evaluation_of_a_model_reading_the_secret_fail_in_the_sandbox(
    gateway_url, token, owner, worker, tmp_path, secret_key_file
):
    version = served(owner, "thief-runs", ReadsFile(str(secret_key_file)), tmp_path)
    headers = {"Authorization": f"Bearer {token}"}
    features = np.ones((5, 4), np.float32)

    inputs = {"file": ("x.npz", _npz(features=features))}
    submitted = requests.post(f"{gateway_url}/api/v1/jobs/", headers=headers, files=inputs,
                              data={"model": "thief-runs"}, timeout=30)  # fmt: skip
    assert submitted.status_code == 201, submitted.text
    job = _settled(gateway_url, headers, f"/api/v1/jobs/{submitted.json()['id']}/")
    assert job["status"] == "failed" and "Permission denied" in job["error"], job
    assert SECRET not in json.dumps(job) and not job.get("result_url"), job

    labelled = io.BytesIO(_npz(features=features, labels=np.zeros(5, np.int64)))
    monitoring_services.dataset_create(actor=owner, model=version.model, name="d", filename="d.npz", file=labelled)
    started = requests.post(f"{gateway_url}/api/v1/evaluations/", headers=headers, timeout=30,
                            json={"model": "thief-runs", "version": version.version, "dataset": "d"})  # fmt: skip
    assert started.status_code == 201, started.text
    run = _settled(gateway_url, headers, f"/api/v1/evaluations/{started.json()['id']}/")
    assert run["status"] == "failed" and "Permission denied" in run["error"], run
    assert SECRET not in json.dumps(run), run
    assert SECRET not in worker.output()


def test_a_job_whose_model_runs_out_of_memory_in_its_host_is_retried_then_failed_saying_so(
    gateway_url, token, owner, worker, tmp_path
):
    served(owner, "greedy", Greedy(), tmp_path)
    headers = {"Authorization": f"Bearer {token}"}

    def job(value: float) -> dict[str, Any]:
        inputs = {"file": ("x.npz", _npz(features=np.full((3, 4), value, np.float32)))}
        submitted = requests.post(f"{gateway_url}/api/v1/jobs/", headers=headers, files=inputs,
                                  data={"model": "greedy"}, timeout=30)  # fmt: skip
        assert submitted.status_code == 201, submitted.text
        return _settled(gateway_url, headers, f"/api/v1/jobs/{submitted.json()['id']}/")

    failed = job(1000.0)
    assert failed["status"] == "failed" and failed["attempts"] == 3, failed
    assert "ran out of memory" in failed["error"] and "3 of 3 attempts" in failed["error"], failed
    # The same model with inputs that fit: the worker and its model host are fine.
    fine = job(1.0)
    assert fine["status"] == "succeeded" and fine["rows_done"] == 3, fine
