"""Issue 12, point 1, for tracked runs: a batch job and an evaluation of a model that reads the
portal's secret run in the same sandbox as predictions (real worker, real broker, real HTTP).

Both fail with the refused read ("Permission denied"), their records and results hold nothing
of the secret, and the worker goes on running honest work. Runs on both backends and on the
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
from tests.integration.thieves import SECRET, ReadsFile, served

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
