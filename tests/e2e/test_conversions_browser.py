"""A person in Chromium converts a version to ONNX int8 from its page, watches the conversion, sees
the child beside its parent (accuracy, latency, size) and promotes it through the evaluation gate;
then an unmodified tritonclient.grpc predicts from it over OIP v2 gRPC (issue 14's "Done when")."""

from __future__ import annotations

import io
import time

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
from playwright.sync_api import expect

from accounts import services as token_services
from monitoring import services as monitoring_services
from monitoring.models import EvaluationRun
from registry import services
from registry.artifacts import artifact_storage
from registry.models import ModelAlias, ModelVersion
from tests.e2e.conftest import login
from tests.integration.conftest import expected
from tests.integration.test_grpc import bearer, when_loaded

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

EXAMPLE = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}


def test_convert_to_onnx_int8_watch_compare_and_promote_through_the_gate(
    page, owner, registered_model, ready_version, model_files, worker, grpc_address, tmp_path
):
    parent = ready_version(labels=["setosa", "versicolor", "virginica"], example_input=EXAMPLE)
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=parent.version)
    features = (np.random.default_rng(0).normal(size=(40, 4)) + 4).astype(np.float32)
    data = io.BytesIO()
    np.savez(data, features=features, labels=expected(model_files, features).argmax(axis=1))
    data.seek(0)
    dataset = monitoring_services.dataset_create(actor=owner, model=registered_model, name="holdout",
                                                 filename="holdout.npz", file=data)  # fmt: skip
    monitoring_services.gate_set(actor=owner, model=registered_model, dataset=dataset, tolerance=0.05)

    login(page, "olivia", "owner-pass-123")
    page.goto("/models/iris/versions/1/")
    # Only what this version may become is offered: no fp16 without a GPU worker.
    options = page.locator("#conversion-target option").all_inner_texts()
    assert options == ["onnx", "onnx-int8"]
    page.select_option("#conversion-target", "onnx-int8")
    page.click("#conversion-start")
    page.wait_for_url("**/conversions/*/")
    # The page follows the run through its steps and reloads when it settles.
    expect(page.locator(".job-progress .status")).to_have_text("succeeded", timeout=120_000)
    expect(page.locator("#conversion-comparison")).to_contain_text("within")
    page.click("#conversion-child")
    page.wait_for_url("**/models/iris/versions/2/")
    expect(page.locator("#lineage-chain")).to_contain_text("v1 (torchscript) → v2 (onnx, onnx-int8)")

    # The child and its parent are evaluated on the model's dataset on their own; then the page
    # shows both side by side.
    deadline = time.monotonic() + 120
    while EvaluationRun.objects.filter(status="succeeded").count() < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    page.reload()
    table = page.locator("#conversion-compare")
    accuracy = table.locator("tr", has_text="holdout · accuracy")
    expect(accuracy.locator("td").nth(0)).to_have_text("1")
    expect(table.locator("tr", has_text="latency p50")).to_be_visible()
    expect(table.locator("tr", has_text="latency p95")).to_be_visible()
    expect(table.locator("tr", has_text="size on disk")).to_be_visible()
    expect(table.locator("tr", has_text="weights in memory")).to_be_visible()
    page.screenshot(path=str(tmp_path / "conversion-child.png"), full_page=True)

    page.click("button[data-action=promote]")
    page.wait_for_url("**/models/iris/versions/2/")
    assert ModelAlias.objects.get(model=registered_model, name="production").version.version == 2

    # The promoted int8 child answers over gRPC under `production`, as onnxruntime computes it.
    child = ModelVersion.objects.get(model=registered_model, version=2)
    token = token_services.token_create(user=owner, name="grpc-after-promotion")[1]
    rows = features[:8]
    inputs = grpcclient.InferInput("features", list(rows.shape), "FP32")
    inputs.set_data_from_numpy(rows)
    with grpcclient.InferenceServerClient(url=grpc_address) as rpc:
        answer = when_loaded(rpc, "iris", [inputs], headers=bearer(token))
        assert rpc.get_model_metadata("iris", headers=bearer(token)).platform == "onnxruntime_onnx"
    [output] = child.signature["outputs"]
    with artifact_storage().open(child.artifact) as stored:
        session = onnxruntime.InferenceSession(stored.read(), providers=["CPUExecutionProvider"])
    local = session.run([output["name"]], {"features": rows})[0]
    assert np.allclose(answer.as_numpy(output["name"]), local, atol=1e-5)
