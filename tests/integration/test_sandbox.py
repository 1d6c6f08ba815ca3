"""Issue 12, point 1: an uploaded model gets nothing from the worker that serves it (real worker, real gateway).

A maintainer uploads TorchScript models whose forward reads a file — the portal's embedded
secret key under PORTAL_DATA_DIR, a canary outside every allowed directory, the process
environment, another model's artifact in storage — and returns its bytes as the prediction.
Served by a worker with the default MODEL_SANDBOX=require, each prediction fails (the read
is refused) and no answer holds the secret. The model hosts themselves are inspected from
outside: their environment holds none of the worker's secrets, seccomp and no_new_privs are
on, and they have no capability. Runs on both backends (embedded, PostgreSQL + Redis).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inference import validation
from portal import demo
from registry import services
from registry.models import VersionStatus
from tests.conftest import upload_file
from tests.integration.conftest import infer_json, request_body
from tests.integration.thieves import SECRET, ReadsFile, decoded, served

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]


def test_models_reading_the_secret_a_canary_or_the_environment_get_nothing(
    gateway_url, token, owner, tmp_path, secret_key_file, service_environment
):
    canary = tmp_path / "canary.txt"
    canary.write_text("canary-" + "c" * 40)
    attacks = {
        "steal-secret": str(secret_key_file),
        "steal-canary": str(canary),
        "steal-environ": "/proc/self/environ",
        "steal-init-environ": "/proc/1/environ",
    }
    for name, target in attacks.items():
        served(owner, name, ReadsFile(target), tmp_path)
        response = infer_json(gateway_url, token, name, request_body(np.ones((1, 4), np.float32)))
        stolen = decoded(response)
        assert response.status_code in (422, 503), (name, response.status_code, response.text)
        assert "Permission denied" in response.text, (name, response.text)
        assert SECRET not in stolen and "canary-ccc" not in stolen, name
        for variable in ("SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"):
            assert variable not in stolen, (name, variable)
    # The worker is unharmed and still serves an honest model.
    module = torch.nn.Linear(4, 2)
    honest = services.model_create(actor=owner, name="honest")
    version = upload_file(owner, honest, demo.save_torchscript(module, tmp_path / "honest.pt"), enqueue=False)
    assert validation.version_validate(version.pk) == VersionStatus.READY
    services.alias_set(actor=owner, model=honest, name="production", version_number=1)
    response = infer_json(gateway_url, token, "honest", request_body(np.ones((2, 4), np.float32)))
    assert response.status_code == 200, response.text
    want = module(torch.ones(2, 4)).detach().numpy().ravel()
    assert np.allclose(response.json()["outputs"][0]["data"], want, atol=1e-6)


def test_a_model_reading_another_models_artifact_gets_nothing(gateway_url, token, owner, tmp_path, service_environment):
    victim = served(owner, "victim", ReadsFile("/dev/null"), tmp_path)
    artifact = Path(service_environment["ARTIFACT_ROOT"]) / victim.artifact
    assert artifact.exists()
    served(owner, "peeker", ReadsFile(str(artifact)), tmp_path)
    response = infer_json(gateway_url, token, "peeker", request_body(np.ones((1, 4), np.float32)))
    assert response.status_code in (422, 503) and "Permission denied" in response.text, response.text


def test_a_worker_validates_an_upload_in_the_sandbox_and_the_thief_fails(owner, worker, tmp_path, secret_key_file):
    model = services.model_create(actor=owner, name="thief-upload")
    path = demo.save_torchscript(ReadsFile(str(secret_key_file)), tmp_path / "thief.pt")
    version = upload_file(owner, model, path)  # queued to the worker after commit
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        version.refresh_from_db()
        if version.status in (VersionStatus.READY, VersionStatus.FAILED):
            break
        time.sleep(0.3)
    assert version.status == VersionStatus.FAILED, version.status
    assert "Permission denied" in version.status_reason and SECRET not in version.status_reason


def _host_pids(worker: Any) -> list[int]:
    """The model hosts under the worker's process group."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            group = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, IndexError, ValueError):
            continue
        if b"inference.sandbox.host" in cmdline and group == worker.process.pid:
            found.append(int(proc.name))
    return found


def test_the_serving_host_holds_no_secret_and_runs_confined(worker, service_environment, gateway_url):
    deadline = time.monotonic() + 120
    while not _host_pids(worker) and time.monotonic() < deadline:
        time.sleep(0.5)
    pids = _host_pids(worker)
    assert pids, "no model host under the worker"
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        for name in ("SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
                     "INFERENCE_REDIS_URL", "PORTAL_DATA_DIR", "ARTIFACT_ROOT"):  # fmt: skip
            assert f"{name}=" not in environ, name
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)  # fmt: skip
        assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
        assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
