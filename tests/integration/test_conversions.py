"""Conversions end to end: REST through the gateway, a real worker whose sandboxed host exports,
quantises and compares, the child served over /v2, evaluated beside its parent; and a worker that
dies mid-conversion."""

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

from accounts import services as token_services
from inference.models import ConversionRun
from monitoring import services as monitoring_services
from monitoring.models import EvaluationRun
from registry.models import ModelVersion, RegisteredModel
from tests.integration.conftest import FEATURES, auth, expected, infer_json, request_body
from tests.integration.faults import Stack, start_beat
from tests.run_environment import run_dir
from tests.worker import Processes, until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

EXAMPLE = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
LABELS = ["setosa", "versicolor", "virginica"]
PATIENCE = 240


def _dataset(owner: Any, model: RegisteredModel, model_files: dict[str, Path]) -> None:
    features = (np.random.default_rng(0).normal(size=(40, 4)) + 4).astype(np.float32)
    labels = expected(model_files, features).argmax(axis=1)
    data = io.BytesIO()
    np.savez(data, features=features, labels=labels)
    data.seek(0)
    monitoring_services.dataset_create(actor=owner, model=model, name="holdout", filename="holdout.npz", file=data)


def _wait(run_id: str, log: Any) -> ConversionRun:
    until(lambda: not ConversionRun.objects.get(pk=run_id).is_active, PATIENCE, "the conversion ended", log)
    return ConversionRun.objects.select_related("child").get(pk=run_id)


@pytest.mark.parametrize(("format", "target"), [("torchscript", "onnx-int8"), ("exported_program", "onnx")])
def test_a_conversion_through_rest_makes_a_served_child_evaluated_beside_its_parent(
    gateway_url: str, worker: Any, owner: Any, registered_model: RegisteredModel, ready_version: Any,
    model_files: dict[str, Path], format: str, target: str,
) -> None:  # fmt: skip
    parent = ready_version(format=format, labels=LABELS, example_input=EXAMPLE)
    _dataset(owner, registered_model, model_files)
    token = token_services.token_create(user=owner, name="convert")[1]
    url = f"{gateway_url}/api/v1/models/iris/versions/{parent.version}/conversions/"
    started = requests.post(url, json={"target": target}, headers=auth(token), timeout=30)
    assert started.status_code == 201, started.text
    run = _wait(started.json()["id"], worker.log)
    assert run.status == "succeeded", run.error
    child = run.child
    assert child is not None and (child.status, child.format, child.parent_id) == ("ready", "onnx", parent.pk)
    comparison = run.result["comparison"]
    assert comparison["within"] and comparison["max_abs_diff"] <= comparison["atol"] + comparison["rtol"] * 100
    print(f"{format} → {target}: {run.result['comparison']}, latency {run.result['latency_ms']}, "
          f"sizes {run.result['sizes']}, memory {run.result['memory_bytes']}")  # fmt: skip

    detail = requests.get(f"{gateway_url}/api/v1/conversions/{run.pk}/", headers=auth(token), timeout=30).json()
    assert detail["child_version"] == child.version and detail["progress"] == 100.0
    lineage = requests.get(f"{gateway_url}/api/v1/models/iris/versions/{child.version}/lineage/",
                           headers=auth(token), timeout=30).json()  # fmt: skip
    assert [link["version"] for link in lineage["chain"]] == [parent.version, child.version]
    assert lineage["chain"][1]["recipe"]["conversion_target"] == target

    # The child is served like any version, and answers like its parent (within the tolerance).
    def served() -> bool:
        return infer_json(gateway_url, token, f"iris/versions/{child.version}", request_body(FEATURES)).ok

    until(served, PATIENCE, "the child was served", worker.log)
    answer = infer_json(gateway_url, token, f"iris/versions/{child.version}", request_body(FEATURES)).json()
    got = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(FEATURES.shape[0], -1)
    np.testing.assert_allclose(got, expected(model_files, FEATURES), atol=0.2, rtol=0.1)

    # Evaluated automatically, the parent too (it had no evaluation): the comparison is there.
    def evaluated() -> bool:
        return EvaluationRun.objects.filter(version__in=[parent, child], status="succeeded").count() == 2

    until(evaluated, PATIENCE, "both versions were evaluated", worker.log)
    accuracy = {run.version_id: run.metrics["accuracy"] for run in EvaluationRun.objects.filter(status="succeeded")}
    assert accuracy[parent.pk] == 1.0 and accuracy[child.pk] >= 0.9


@pytest.fixture
def stack(service_environment: dict[str, str], owner: Any, processes: Processes, request: Any) -> Stack:
    token = token_services.token_create(user=owner, name="recovery")[1]
    directory = run_dir() / f"conversion-{request.node.name[:40]}"
    fast = {"RUNS_HEARTBEAT_SECONDS": "0.3", "RUNS_STALE_SECONDS": "2", "RUNS_SWEEP_SECONDS": "1",
            "RUNS_RESEND_SECONDS": "3"}  # fmt: skip
    return Stack(processes, service_environment | fast, directory, token)


@pytest.mark.private_broker  # the stack's own broker: CI's RabbitMQ pass would repeat it as it is
def test_a_conversion_whose_worker_is_killed_is_taken_up_again_and_leaves_one_child(
    stack: Stack, owner: Any, ready_version: Any
) -> None:
    parent = ready_version(labels=LABELS, example_input=EXAMPLE)
    start_beat(stack.processes, stack.environment, stack.directory)
    # The first worker times its parent for ever: it is surely mid-conversion when it is killed.
    first = start_worker_with(stack, "worker-1", CONVERSION_LATENCY_REPEATS="100000000")
    started = stack.post("/api/v1/models/iris/versions/1/conversions/", json={"target": "onnx-int8"})
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    until(lambda: ConversionRun.objects.get(pk=run_id).status == "running", PATIENCE, "it started", first.log)
    time.sleep(1.0)
    os.killpg(first.process.pid, signal.SIGKILL)
    assert ConversionRun.objects.get(pk=run_id).status == "running"
    second = start_worker_with(stack, "worker-2", CONVERSION_LATENCY_REPEATS="20")
    run = _wait(run_id, second.log)
    assert (run.status, run.attempts) == ("succeeded", 2), run.error
    assert list(ModelVersion.objects.filter(parent=parent).values_list("version", flat=True)) == [2]


def start_worker_with(stack: Stack, name: str, **environment: str) -> Any:
    saved = dict(stack.environment)
    stack.environment.update(environment)
    try:
        return stack.worker(name)
    finally:
        stack.environment.clear()
        stack.environment.update(saved)


@pytest.mark.private_broker  # the stack's own broker: CI's RabbitMQ pass would repeat it as it is
def test_a_conversion_cancelled_mid_step_stops_its_host_and_leaves_nothing(
    stack: Stack, owner: Any, ready_version: Any, shared_data_dir: Path
) -> None:
    parent = ready_version(labels=LABELS, example_input=EXAMPLE)
    worker = start_worker_with(stack, "worker", CONVERSION_LATENCY_REPEATS="100000000")
    artifacts = shared_data_dir / "artifacts"
    before = {path for path in artifacts.rglob("*") if path.is_file()}
    started = stack.post("/api/v1/models/iris/versions/1/conversions/", json={"target": "onnx"})
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    until(lambda: ConversionRun.objects.get(pk=run_id).status == "running", PATIENCE, "it started", worker.log)
    time.sleep(1.0)  # inside the first step: the host times its parent for ever
    cancelled = stack.post(f"/api/v1/conversions/{run_id}/cancel/")
    assert cancelled.status_code == 200, cancelled.text
    asked = time.monotonic()
    run = _wait(run_id, worker.log)
    stopped = time.monotonic() - asked
    assert (run.status, run.child, run.error) == ("cancelled", None, "")
    assert not ModelVersion.objects.filter(parent=parent).exists()
    assert {path for path in artifacts.rglob("*") if path.is_file()} == before
    print(f"cancelled mid-step {stopped:.1f}s after the request")
    assert stopped < 30
