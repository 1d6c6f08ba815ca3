"""Routing across worker processes: load spreading, dedicated queues, a worker dying mid-request."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core import redis as shared_redis
from core.invalidation import INVALIDATE_CHANNEL
from inference import validation, wire
from portal import demo
from registry import services
from registry.models import RegisteredModel
from tests.conftest import upload_file
from tests.integration.conftest import infer_json, request_body
from tests.worker import start_worker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def workers_on(queue: str) -> set[str]:
    """Worker process ids whose heartbeat says they serve `queue`."""
    raw = shared_redis.client().hgetall(wire.WORKERS_KEY)
    now = time.time()
    beats = {k.decode(): wire.Heartbeat.decode(v) for k, v in raw.items()}
    return {k for k, beat in beats.items() if queue in beat.queues and beat.beat_at > now - 10}


def wait_for_workers(queue: str, count: int, timeout: float = 90) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = workers_on(queue)
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} live workers on {queue!r}: {workers_on(queue)}")


def pin(owner: Any, name: str, path: Path, queue: str) -> None:
    model = services.model_create(actor=owner, name=name)
    version = upload_file(owner, model, path, enqueue=False)
    assert validation.version_validate(version.pk) == "ready", version
    services.alias_set(actor=owner, model=model, name="production", version_number=version.version)
    RegisteredModel.objects.filter(pk=model.pk).update(serving_queue=queue)
    shared_redis.client().publish(INVALIDATE_CHANNEL, "queue changed")


def test_two_workers_share_load_and_a_dedicated_queue_is_served_only_there(
    gateway_url, token, served, owner, model_files, service_environment, shared_data_dir, processes
):
    start_worker(processes, service_environment, shared_data_dir / "worker-dedicated.log", queues="inference,dedicated")
    wait_for_workers("inference", 2)
    rows = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)

    def one(i: int) -> str:
        response = infer_json(gateway_url, token, "iris", request_body(rows[i : i + 1]))
        assert response.status_code == 200, response.text
        return response.json()["parameters"]["worker"]

    seen: set[str] = set()
    for _ in range(20):
        with ThreadPoolExecutor(max_workers=32) as pool:
            seen |= set(pool.map(one, range(64)))
        if len(seen) == 2:
            break
    assert seen == workers_on("inference"), "both worker processes should have answered"

    pin(owner, "pinned", model_files["torchscript"], "dedicated")
    dedicated = workers_on("dedicated")
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda i: infer_json(gateway_url, token, "pinned", request_body(rows[i : i + 1])),
                                range(32)))  # fmt: skip
    assert {a.status_code for a in answers} == {200}
    assert {a.json()["parameters"]["worker"] for a in answers} <= dedicated


class Slow(torch.nn.Module):
    """Spins for as many matrix products as the first input value asks (0 for validation's random input)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(256) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(int(x[0, 0].item())):
            y = torch.tanh(y @ self.weight)
        return y


def test_worker_dying_mid_request_fails_it_cleanly_and_the_next_is_served(
    gateway_url, token, owner, tmp_path, service_environment, shared_data_dir, processes
):
    signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 256]}]}
    model = services.model_create(actor=owner, name="slow")
    version = upload_file(owner, model, demo.save_torchscript(Slow(), tmp_path / "slow.pt"), signature=signature,
                          enqueue=False)  # fmt: skip
    assert validation.version_validate(version.pk) == "ready"
    services.alias_set(actor=owner, model=model, name="production", version_number=1)
    RegisteredModel.objects.filter(pk=model.pk).update(serving_queue="slow")
    shared_redis.client().publish(INVALIDATE_CHANNEL, "queue changed")
    start_worker(processes, service_environment, shared_data_dir / "worker-slow.log", queues="slow")
    (victim,) = wait_for_workers("slow", 1)
    x = np.zeros((1, 256), np.float32)
    x[0, 0] = 50_000_000  # minutes of work (200k took only 0.7 s here): the worker dies long before it ends
    outcome: dict[str, Any] = {}
    started = time.monotonic()
    thread = threading.Thread(target=lambda: outcome.update(r=infer_json(gateway_url, token, "slow",
                                                                         {"inputs": [_tensor(x)]})))  # fmt: skip
    thread.start()
    time.sleep(1.0)
    os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
    thread.join(timeout=30)
    response = outcome["r"]
    # The death is known from the worker's heartbeat (it named the batch it was computing):
    # 503 as soon as the heartbeat lapses, not the 504 of the gateway's timeout.
    assert response.status_code == 503, response.text
    assert "stopped" in response.json()["error"]
    timeout = float(service_environment["INFERENCE_TIMEOUT_SECONDS"])
    assert time.monotonic() - started < timeout + 20, "the request must fail within the configured timeout"

    # Celery replaces the dead pool process; its serving loop takes the next request.
    replacement = wait_for_workers("slow", 1) - {victim}
    deadline = time.monotonic() + 90
    while not replacement and time.monotonic() < deadline:
        time.sleep(0.2)
        replacement = workers_on("slow") - {victim}
    assert replacement, "no replacement worker process came up"
    x[0, 0] = 2
    response = infer_json(gateway_url, token, "slow", {"inputs": [_tensor(x)]})
    assert response.status_code == 200, response.text
    assert response.json()["parameters"]["worker"] in replacement


def _tensor(x: np.ndarray) -> dict[str, Any]:
    return {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
