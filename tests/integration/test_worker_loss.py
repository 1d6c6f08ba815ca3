"""The gateway knows when workers die or are busy loading, and says so at once (503), not at its timeout.

A broker (Redis on TCP), web process and worker of each test's own; the database is the run's
test database (SQLite or PostgreSQL). Workers are killed for real (kill -9 of the group).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from django.core.files import File

from accounts import services as token_services
from inference import validation
from portal import demo, text_models
from registry import services
from tests.conftest import upload_file
from tests.integration.faults import Stack
from tests.run_environment import run_dir
from tests.worker import Processes, until

# Every process of these tests uses a broker of the test's own: CI's RabbitMQ pass would repeat them as they are.
pytestmark = [pytest.mark.integration, pytest.mark.private_broker, pytest.mark.django_db(transaction=True)]

SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
             "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}  # fmt: skip
# Matrix products: ~0.2 s of a core per 10,000 here.
WARM_UP_SPIN = 300_000


class SlowToWarm(torch.nn.Module):
    """Spins for as many matrix products as its first feature asks, and for WARM_UP_SPIN on inputs
    that are not whole numbers (the random warm-up of a load): its load takes seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(64) * 0.5)
        self.warm_up_spin = WARM_UP_SPIN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spins = int(x[:, 0].sum().item())
        if bool((x != x.round()).any()):
            spins = self.warm_up_spin
        spin = torch.zeros(1, 64)
        for _ in range(spins):
            spin = torch.tanh(spin @ self.weight)
        return x + spin[:, :1] * 0.0


def body(spins: int) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [float(spins), 1.0, 2.0, 3.0]}]}


def slow_model(owner: Any, directory: Path, warm_up_spin: int = WARM_UP_SPIN) -> Any:
    """The SlowToWarm model as "slow" in production; its load spins `warm_up_spin` matrix products."""
    module = SlowToWarm()
    module.warm_up_spin = warm_up_spin
    model = services.model_create(actor=owner, name="slow")
    version = upload_file(owner, model, demo.save_torchscript(module, directory / "slow.pt"),
                          signature=SIGNATURE, enqueue=False)  # fmt: skip
    assert validation.version_validate(version.pk) == "ready"
    services.alias_set(actor=owner, model=model, name="production", version_number=version.version)
    return version


@pytest.fixture
def slow(owner: Any, tmp_path: Path) -> Any:
    return slow_model(owner, tmp_path)


def stack_with(service_environment: dict[str, str], owner: Any, processes: Processes, name: str,
               **settings: str) -> Stack:  # fmt: skip
    token = token_services.token_create(user=owner, name=name)[1]
    return Stack(processes, service_environment | settings, run_dir() / name, token)


def test_ready_drops_within_two_seconds_of_the_last_worker_dying_and_a_waiting_request_gets_503(
    service_environment, owner, processes, slow
):
    stack = stack_with(service_environment, owner, processes, "worker-death", INFERENCE_TIMEOUT_SECONDS="30")
    worker = stack.worker("worker")
    ready = f"{stack.base}/v2/health/ready"
    until(lambda: requests.get(ready, timeout=5).status_code == 200, 30, "ready", worker.log)
    # The model is loaded (the load is slow): then a request that computes for a long while.
    until(lambda: stack.infer("slow", body(0)).status_code == 200, 90, "the model served", worker.log)
    outcome: dict[str, Any] = {}

    def long_request() -> None:
        outcome["answer"] = stack.infer("slow", body(2_000_000))  # ~40 s of work

    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(1.5)
    os.killpg(worker.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    until(lambda: requests.get(ready, timeout=5).status_code == 503, 10, "not ready")
    not_ready_after = time.monotonic() - killed
    thread.join(timeout=30)
    answered_after = time.monotonic() - killed
    answer = outcome["answer"]
    assert answer.status_code == 503, answer.text
    assert "stopped" in answer.json()["error"] and answer.headers["Retry-After"]
    print(f"not ready {not_ready_after:.2f}s and the waiting request answered 503 {answered_after:.2f}s after the kill")
    assert not_ready_after < 3 and answered_after < 5
    # A request with no worker left is refused at once, not after the 30 s timeout.
    started = time.monotonic()
    assert stack.infer("slow", body(0)).status_code == 503
    assert time.monotonic() - started < 3


def test_a_model_slower_to_load_than_the_timeout_is_answered_503_loading_until_it_serves(
    service_environment, owner, processes, tmp_path
):
    # A load of about 5 s here, well past the 2 s timeout (the `slow` fixture's, about 2.8 s,
    # ended within a first request's 2 s on a CI run).
    slow_model(owner, tmp_path, warm_up_spin=2 * WARM_UP_SPIN)
    stack = stack_with(service_environment, owner, processes, "slow-load", INFERENCE_TIMEOUT_SECONDS="2")
    worker = stack.worker("worker")
    until(lambda: requests.get(f"{stack.base}/v2/health/ready", timeout=5).status_code == 200, 30, "ready")
    answers = []
    began = time.monotonic()
    while time.monotonic() - began < 120:
        started = time.monotonic()
        answer = stack.infer("slow", body(0))
        answers.append((answer.status_code, time.monotonic() - started, answer))
        if answer.status_code == 200:
            break
        time.sleep(0.2)
    statuses = [status for status, _, _ in answers]
    assert statuses[-1] == 200, (statuses, worker.output()[-3000:])
    loading = [answer for status, _, answer in answers if status == 503]
    assert loading, statuses
    assert all("is loading" in answer.json()["error"] and answer.headers["Retry-After"] for answer in loading)
    # Never a 504: a request that waited the 2 s timeout for the load is told it loads, those
    # after it are told at once; the load went on meanwhile.
    assert set(statuses) == {503, 200}
    waits = [elapsed for status, elapsed, _ in answers if status == 503]
    assert max(waits) < 2 + 1 and all(elapsed < 0.5 for elapsed in waits[1:]), waits
    print(f"{len(loading)} answers 503 loading, then 200 after {time.monotonic() - began:.1f}s")


def test_a_worker_killed_mid_batch_beside_a_live_one_answers_its_request_503_and_the_other_serves_on(
    service_environment, owner, processes, tmp_path
):
    slow_model(owner, tmp_path, warm_up_spin=100)  # loads at once: only the batches are slow
    # Heartbeats a minute apart: the batch the killed worker runs is in none of them, so only the
    # record of what it took (written as it popped the batch) tells the gateway whose death it was.
    # Three batches in flight: one on each worker and one that waits in the queue, taken by nobody.
    stack = stack_with(service_environment, owner, processes, "two-workers", INFERENCE_TIMEOUT_SECONDS="120",
                       INFERENCE_HEARTBEAT_SECONDS="60", INFERENCE_WORKER_TTL_SECONDS="300",
                       INFERENCE_MAX_IN_FLIGHT="3")  # fmt: skip
    doomed = stack.worker("worker-doomed")
    until(lambda: stack.infer("slow", body(0)).status_code == 200, 90, "the model served", doomed.log)
    answers: dict[str, tuple[requests.Response, float]] = {}

    def ask(name: str, spins: int) -> threading.Thread:
        def run() -> None:
            answers[name] = (stack.infer("slow", body(spins), timeout=150), time.monotonic())

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    # The only worker takes a batch of minutes; a second worker starts meanwhile and serves.
    running = ask("killed", 50_000_000)
    time.sleep(1.5)
    survivor = stack.worker("worker-survivor")
    until(lambda: stack.infer("slow", body(0)).status_code == 200, 90, "the second worker served", survivor.log)
    # The survivor takes a batch of many seconds (~10 to 40 here); the next waits in the queue behind it.
    busy = ask("busy", 2_000_000)
    time.sleep(1.0)
    queued = ask("queued", 0)
    time.sleep(1.0)
    assert not answers, {name: answer.text for name, (answer, _) in answers.items()}
    os.killpg(doomed.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    running.join(timeout=30)
    assert "killed" in answers, "the request on the killed worker was not answered within 30 s"
    answer, at = answers["killed"]
    assert answer.status_code == 503, answer.text
    assert "stopped (it died or was shut down)" in answer.json()["error"] and answer.headers["Retry-After"]
    print(f"the request on the killed worker answered 503 {at - killed:.2f}s after the kill")
    assert at - killed < 3
    # Nothing else was refused: the survivor finishes its batch, then takes the one that waited.
    busy.join(timeout=120)
    queued.join(timeout=120)
    served = {name: answers[name][0] for name in ("busy", "queued")}
    assert all(answer.status_code == 200 for answer in served.values()), {n: a.text for n, a in served.items()}
    assert served["busy"].json()["parameters"]["worker"] == served["queued"].json()["parameters"]["worker"]
    assert stack.infer("slow", body(0)).status_code == 200


def test_a_generation_model_slower_to_load_than_the_timeout_is_answered_503_loading_on_v1_until_it_serves(
    service_environment, owner, processes, tmp_path
):
    slow_model(owner, tmp_path, warm_up_spin=2 * WARM_UP_SPIN)
    generator = services.model_create(actor=owner, name="gpt")
    archive = text_models.directory_zip(text_models.gpt2_save(tmp_path / "gpt", size="tiny"), tmp_path / "gpt.zip")
    with archive.open("rb") as stream:
        version = services.version_upload(actor=owner, model=generator, file=File(stream, name=archive.name),
                                          filename=archive.name, task="text-generation", enqueue=False)  # fmt: skip
    assert validation.version_validate(version.pk) == "ready"
    services.alias_set(actor=owner, model=generator, name="production", version_number=version.version)
    stack = stack_with(service_environment, owner, processes, "slow-generation-load", INFERENCE_TIMEOUT_SECONDS="2")
    worker = stack.worker("worker")
    until(lambda: requests.get(f"{stack.base}/v2/health/ready", timeout=5).status_code == 200, 30, "ready")
    # A worker loads one model at a time: "slow" first (its warm-up alone lasts many times the 2 s
    # timeout), and the generation model's load waits behind it: to the gateway, a load far slower
    # than the timeout, seen in the worker's heartbeat.
    assert stack.infer("slow", body(0)).status_code == 503
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/v1/completions", {"model": "gpt", "prompt": "Once", "max_tokens": 2, "stream": True}),
        ("/v1/chat/completions", {"model": "gpt", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    ]
    answers: list[tuple[int, float, bool, requests.Response]] = []
    began = time.monotonic()
    while time.monotonic() - began < 180:
        path, request = calls[len(answers) % 2]
        started = time.monotonic()
        answer = stack.post(path, json=request)
        answers.append((answer.status_code, time.monotonic() - started, bool(request.get("stream")), answer))
        if answer.status_code == 200:
            break
        time.sleep(0.2)
    statuses = [status for status, _, _, _ in answers]
    assert statuses[-1] == 200, (statuses, answers[-1][3].text, worker.output()[-3000:])
    loading = [(streamed, answer) for status, _, streamed, answer in answers if status == 503]
    # Both shapes were refused while it loaded: streamed or not, the error comes before any event.
    assert {streamed for streamed, _ in loading} == {True, False}, statuses
    for _, answer in loading:
        assert answer.headers["Content-Type"].startswith("application/json") and answer.headers["Retry-After"]
        error = answer.json()["error"]
        assert "'gpt' v1 is loading on a worker" in error["message"] and error["type"] == "server_error", error
    # Never a 504: the request that waited for the load was told at its deadline at the latest, those
    # after it at once; the load went on meanwhile, and the request after it was served.
    assert set(statuses) == {503, 200}
    waits = [elapsed for status, elapsed, _, _ in answers if status == 503]
    assert max(waits) < 2 + 1 and all(elapsed < 0.5 for elapsed in waits[1:]), waits
    print(f"{len(loading)} /v1 answers 503 loading, then 200 after {time.monotonic() - began:.1f}s")
