"""Batch jobs end to end: HTTP with a bearer token, the broker, and separate worker processes."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch

from accounts import services as token_services
from inference.models import BatchJob
from registry import services
from registry.models import RegisteredModel
from tests.worker import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LABELS = ["setosa", "versicolor", "virginica"]


@pytest.fixture
def http(live_server: Any, owner: Any, worker: Any) -> requests.Session:
    """A requests session against the live server, authenticated by a real API token."""
    _, secret = token_services.token_create(user=owner, name="jobs")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {secret}"
    session.base_url = live_server.url  # type: ignore[attr-defined]
    return session


@pytest.fixture
def production(owner: Any, registered_model: RegisteredModel, ready_version: Any) -> Any:
    version = ready_version(labels=LABELS)
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=version.version)
    return version


def expected(model_files: dict[str, Path], x: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(model_files["torchscript"]))
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def submit(http: requests.Session, filename: str, content: bytes, **fields: Any) -> dict[str, Any]:
    response = http.post(
        f"{http.base_url}/api/v1/jobs/",
        files={"file": (filename, content)},
        data={"model": "iris", **fields},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


def wait_settled(http: requests.Session, job_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"{http.base_url}/api/v1/jobs/{job_id}/", timeout=10).json()
        assert 0 <= body["progress"] <= 100
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {body['status']} after {timeout}s")


def test_jobs_submitted_over_http_run_on_the_worker_and_match_a_direct_forward(http, production, model_files, worker):
    x = (np.random.default_rng(3).normal(size=(50, 4)) + 5).astype(np.float32)
    want = expected(model_files, x)

    job = submit(http, "inputs.npz", npz_bytes(features=x), chunk_size="8")
    body = wait_settled(http, job["id"])
    assert (body["status"], body["progress"], body["rows_done"], body["version"]) == ("succeeded", 100.0, 50, 1)
    download = http.get(f"{http.base_url}{body['result_url']}", timeout=30)
    assert download.status_code == 200
    with np.load(io.BytesIO(download.content), allow_pickle=False) as npz:
        np.testing.assert_allclose(npz["output__0"], want, rtol=1e-5, atol=1e-5)
        assert npz["label"].tolist() == [LABELS[i] for i in want.argmax(axis=1)]

    lines = b"".join(json.dumps({"features": row.tolist()}).encode() + b"\n" for row in x[:7])
    job = submit(http, "inputs.jsonl", lines, version="1")
    body = wait_settled(http, job["id"])
    assert body["status"] == "succeeded", body["error"]
    result = [
        json.loads(line) for line in http.get(f"{http.base_url}{body['result_url']}", timeout=30).text.splitlines()
    ]
    np.testing.assert_allclose([line["output__0"] for line in result], want[:7], rtol=1e-5, atol=1e-5)
    assert [line["label"] for line in result] == [LABELS[i] for i in want[:7].argmax(axis=1)]
    assert "inference.tasks.batch_job_run" in worker.output()

    # A bad file is refused at once, and the whole list is the caller's own.
    response = http.post(
        f"{http.base_url}/api/v1/jobs/",
        files={"file": ("x.npz", b"PK\x03\x04broken")},
        data={"model": "iris"},
        timeout=30,
    )
    assert response.status_code == 400 and "not a readable .npz" in response.json()["error"]
    assert http.get(f"{http.base_url}/api/v1/jobs/", timeout=10).json()["count"] == 2


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_job_whose_worker_process_dies_is_redelivered_and_finishes(
    http, production, registered_model, model_files, service_environment, shared_data_dir, processes
):
    # A worker of its own (dedicated queue), so killing its pool process disturbs no other test.
    RegisteredModel.objects.filter(pk=registered_model.pk).update(serving_queue="jobs-crash")
    crashing = start_worker(
        processes, service_environment, shared_data_dir / "worker-jobs-crash.log", queues="jobs-crash"
    )
    x = (np.random.default_rng(4).normal(size=(40_000, 4)) + 5).astype(np.float32)
    job = submit(http, "inputs.npz", npz_bytes(features=x), chunk_size="1")
    deadline = time.monotonic() + 60
    while BatchJob.objects.get(pk=job["id"]).rows_done == 0:
        assert time.monotonic() < deadline, crashing.output()[-3000:]
        time.sleep(0.05)
    for child in _children(crashing.process.pid):
        os.kill(child, signal.SIGKILL)
    body = wait_settled(http, job["id"], timeout=180)
    assert body["status"] == "succeeded", (body["error"], crashing.output()[-3000:])
    assert body["attempts"] == 2
    result = http.get(f"{http.base_url}{body['result_url']}", timeout=30)
    with np.load(io.BytesIO(result.content), allow_pickle=False) as npz:
        np.testing.assert_allclose(npz["output__0"], expected(model_files, x), rtol=1e-5, atol=1e-5)
