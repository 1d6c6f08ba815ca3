"""ONNX Runtime as a serving format end to end: REST upload to the gateway, validation by a real worker in its
sandboxed host, predictions over /v2 (tritonclient binary and JSON), the version page naming the provider."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import requests
import tritonclient.http as triton
from django.test import Client
from tritonclient.utils import InferenceServerException

from registry import services
from registry.models import RegisteredModel
from tests.integration.conftest import auth, infer_json
from tests.onnx_graphs import IRIS_INPUT, IRIS_OUTPUT

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ROWS = np.random.default_rng(3).normal(loc=5.0, size=(7, 4)).astype(np.float32)


def _upload(gateway_url: str, token: str, path: Path, **fields: Any) -> requests.Response:
    with path.open("rb") as stream:
        return requests.post(
            f"{gateway_url}/api/v1/models/iris/versions/",
            files={"file": (path.name, stream)},
            data={key: json.dumps(value) if isinstance(value, dict) else value for key, value in fields.items()},
            headers=auth(token),
            timeout=60,
        )


def _settled(gateway_url: str, token: str, version: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{gateway_url}/api/v1/models/iris/versions/{version}/", headers=auth(token), timeout=10)
        data = body.json()
        if data["status"] in ("ready", "failed"):
            return data
        time.sleep(0.3)
    raise AssertionError(f"iris v{version} is still {data['status']} after {timeout}s")


def _infer(client: triton.InferenceServerClient, token: str, binary: bool) -> Any:
    """An inference, retried while the worker answers 503 "loading" (a fresh host loads the model)."""
    tensor = triton.InferInput(IRIS_INPUT, list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=binary)
    wanted = triton.InferRequestedOutput(IRIS_OUTPUT, binary_data=binary)
    deadline = time.monotonic() + 90
    while True:
        try:
            return client.infer("iris", [tensor], outputs=[wanted], request_id="onnx-1", headers=auth(token))
        except InferenceServerException as exc:
            if "is loading" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def onnx_served(owner: Any, registered_model: RegisteredModel, onnx_files: dict[str, Path], token: str,
                gateway_url: str) -> dict[str, Any]:  # fmt: skip
    """The iris MLP with its weights as external data, uploaded as a .zip over REST and made production."""
    response = _upload(gateway_url, token, onnx_files["onnx_zip"], description="iris as ONNX")
    assert response.status_code == 201, response.text
    body = _settled(gateway_url, token, response.json()["version"])
    assert body["status"] == "ready", body["status_reason"]
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=body["version"])
    return body


def test_an_onnx_version_is_validated_by_the_worker_and_served_over_v2(
    onnx_served, client, token, gateway_url, onnx_files, owner
):
    figures = onnx_served["validation"]
    assert onnx_served["format"] == "onnx" and onnx_served["signature_source"] == "graph"
    assert figures["provider"] == "CPUExecutionProvider" and figures["onnxruntime_version"] == onnxruntime.__version__
    assert figures["latency_ms"]["p50"] > 0 and figures["parameter_count"] == 67

    metadata = client.get_model_metadata("iris", headers=auth(token))
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": IRIS_INPUT, "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": IRIS_OUTPUT, "datatype": "FP32", "shape": [-1, 3]}]

    session = onnxruntime.InferenceSession(str(onnx_files["onnx"]), providers=["CPUExecutionProvider"])
    [reference] = session.run([IRIS_OUTPUT], {IRIS_INPUT: ROWS})
    for binary in (True, False):
        result = _infer(client, token, binary)
        np.testing.assert_allclose(result.as_numpy(IRIS_OUTPUT), reference, rtol=1e-5, atol=1e-6)
        assert result.get_response()["id"] == "onnx-1"

    body = {"inputs": [{"name": IRIS_INPUT, "shape": [2, 4], "datatype": "FP32", "data": ROWS[:2].tolist()}]}
    response = infer_json(gateway_url, token, "iris", body)
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    np.testing.assert_allclose(np.array(output["data"]).reshape(2, 3), reference[:2], rtol=1e-5, atol=1e-6)
    friendly = requests.post(f"{gateway_url}/api/v1/models/iris/predict/", headers=auth(token), timeout=30,
                             json={"inputs": {IRIS_INPUT: ROWS[:2].tolist()}})  # fmt: skip
    assert friendly.status_code == 200, friendly.text
    np.testing.assert_allclose(np.array(friendly.json()["outputs"][IRIS_OUTPUT]), reference[:2], rtol=1e-5, atol=1e-6)
    wrong = {"inputs": [{"name": IRIS_INPUT, "shape": [1, 5], "datatype": "FP32", "data": [1.0] * 5}]}
    response = infer_json(gateway_url, token, "iris", wrong)
    assert response.status_code == 400 and "shape" in response.json()["error"]

    browser = Client()
    browser.force_login(owner)
    page = browser.get(f"/models/iris/versions/{onnx_served['version']}/").content.decode()
    assert "CPUExecutionProvider" in page and "onnxruntime" in page


def test_bad_onnx_files_are_refused_over_rest_and_a_too_new_opset_fails_on_the_worker(
    token, gateway_url, registered_model, tmp_path, model_files
):
    import onnx

    from tests.onnx_graphs import relu_model

    random = tmp_path / "random.onnx"
    random.write_bytes(np.random.default_rng(0).bytes(3000))
    for path, fragment in ((random, "not an ONNX model"), (model_files["torchscript"], "but it is a torchscript")):
        response = _upload(gateway_url, token, path, format="onnx")
        assert response.status_code == 400 and fragment in response.json()["error"], response.text
    future = tmp_path / "future.onnx"
    onnx.save(relu_model(opset=30), future)
    response = _upload(gateway_url, token, future)
    assert response.status_code == 201, response.text
    body = _settled(gateway_url, token, response.json()["version"])
    assert body["status"] == "failed" and "imports opset 30" in body["status_reason"], body["status_reason"]
