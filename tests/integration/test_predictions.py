"""Hosted predictions end to end: a real OIP v2 client, the gateway under uvicorn, a worker process."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from accounts import services as token_services
from inference import validation
from portal import demo
from registry import services
from registry.models import RegisteredModel
from tests.conftest import upload_file
from tests.integration.conftest import FEATURES, auth, expected, infer_json, request_body

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]


def test_triton_client_metadata_and_readiness(client, token, served):
    headers = auth(token)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris", headers=headers)
    assert client.is_model_ready("iris", model_version="1", headers=headers)
    metadata = client.get_model_metadata("iris", headers=headers)
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}]
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("binary", [False, True])
def test_triton_client_infers_json_and_binary(client, token, served, model_files, binary):
    tensor = triton.InferInput("features", list(FEATURES.shape), "FP32")
    tensor.set_data_from_numpy(FEATURES, binary_data=binary)
    wanted = triton.InferRequestedOutput("output__0", binary_data=binary)
    result = client.infer("iris", [tensor], outputs=[wanted], request_id="req-7", headers=auth(token))
    np.testing.assert_allclose(result.as_numpy("output__0"), expected(model_files, FEATURES), atol=1e-5)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_name"] == "iris" and response["model_version"] == "1"
    assert response["parameters"]["batch_size"] >= 2


def test_versions_and_aliases_are_addressable(client, token, owner, registered_model, served, ready_version):
    second = ready_version("exported_program")
    services.alias_set(actor=owner, model=registered_model, name="staging", version_number=second.version)
    tensor = triton.InferInput("features", [1, 4], "FP32")
    tensor.set_data_from_numpy(FEATURES[:1])
    for version, number in [("", "1"), ("2", "2"), ("staging", "2"), ("1", "1")]:
        result = _infer_when_loaded(client, [tensor], version, token)
        assert result.get_response()["model_version"] == number


def _infer_when_loaded(client: triton.InferenceServerClient, tensors: list[Any], version: str, token: str) -> Any:
    """An inference, retried while the worker answers 503 "loading" (torch.export loads take
    seconds on a busy machine, longer than the test gateway's timeout)."""
    deadline = time.monotonic() + 90
    while True:
        try:
            return client.infer("iris", tensors, model_version=version, headers=auth(token))
        except InferenceServerException as exc:
            if "is loading" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_concurrent_requests_are_batched_and_correct(gateway_url, token, served, model_files):
    rows = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)

    def one(i: int) -> dict[str, Any]:
        response = infer_json(gateway_url, token, "iris", request_body(rows[i : i + 1]))
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(one, range(64)))
    got = np.array([a["outputs"][0]["data"] for a in answers], dtype=np.float32)
    np.testing.assert_allclose(got, expected(model_files, rows), atol=1e-5)
    assert max(a["parameters"]["batch_size"] for a in answers) > 1


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (request_body(np.zeros((1, 5), np.float32)), 400, "input 'features'"),
        ({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}, 400, "FP64"),
        ({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]}, 400, "needs 4"),
        ({"inputs": []}, 400, "'inputs'"),
        ({"inputs": [{"name": "other", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}, 400, "other"),
        (request_body(np.zeros((1, 4), np.float32), outputs=[{"name": "nope"}]), 400, "nope"),
        (b'{"inputs": [', 400, "JSON"),
        (request_body(np.zeros((30000, 4), np.float32)), 413, ""),
    ],
)
def test_bad_requests_get_clear_errors(gateway_url, token, served, body, status, fragment):
    response = infer_json(gateway_url, token, "iris", body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_binary_header_beyond_body_and_element_limit(gateway_url, token, served):
    header = json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 16}}]}).encode()  # fmt: skip
    body = header + np.zeros(4, np.float32).tobytes()
    response = infer_json(gateway_url, token, "iris", body, headers={"Inference-Header-Content-Length": "9999"})
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]
    ok = infer_json(gateway_url, token, "iris", body, headers={"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200, ok.text
    big = np.zeros((26000, 4), np.float32)
    header = json.dumps({"inputs": [{"name": "features", "shape": list(big.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": big.nbytes}}]}).encode()  # fmt: skip
    response = infer_json(gateway_url, token, "iris", header + big.tobytes(),
                          headers={"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert response.status_code == 413 and "elements" in response.json()["error"]


def test_nan_and_inf_pass_through(gateway_url, token, served):
    body = '{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [NaN, 1, Infinity, 0]}]}'
    response = infer_json(gateway_url, token, "iris", body)
    assert response.status_code == 200, response.text
    assert any(np.isnan(v) or np.isinf(v) for v in response.json()["outputs"][0]["data"])


def test_auth_unknown_and_not_ready(gateway_url, token, served, owner, registered_model, model_files, outsider):
    assert infer_json(gateway_url, "", "iris", request_body(FEATURES)).status_code == 401
    assert infer_json(gateway_url, "mp_00000000_nope", "iris", request_body(FEATURES)).status_code == 401
    response = infer_json(gateway_url, token, "nope", request_body(FEATURES))
    assert response.status_code == 404 and "'nope' not found" in response.json()["error"]
    stranger = token_services.token_create(user=outsider, name="x")[1]
    response = infer_json(gateway_url, stranger, "iris", request_body(FEATURES))
    assert response.status_code == 404, "another user's private model must look absent"
    assert requests.get(f"{gateway_url}/v2/models/iris", headers=auth(stranger), timeout=5).status_code == 404
    pending = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    response = infer_json(gateway_url, token, f"iris/versions/{pending.version}", request_body(FEATURES))
    assert response.status_code == 503 and "pending" in response.json()["error"]
    response = requests.get(
        f"{gateway_url}/v2/models/iris/versions/{pending.version}/ready", headers=auth(token), timeout=5
    )
    assert response.status_code == 400
    response = infer_json(gateway_url, token, "iris/versions/9", request_body(FEATURES))
    assert response.status_code == 404


def test_model_that_raises_gets_422_naming_it_and_the_worker_stays_up(gateway_url, token, owner, tmp_path):
    class Picky(torch.nn.Module):
        def forward(self, features: torch.Tensor) -> torch.Tensor:
            if bool(features.sum() > 1000.0):
                raise RuntimeError("input too large for this model")
            return features * 2

    model = services.model_create(actor=owner, name="picky")
    path = demo.save_torchscript(Picky(), tmp_path / "picky.pt")
    version = upload_file(owner, model, path, enqueue=False)
    assert validation.version_validate(version.pk) == "ready"
    services.alias_set(actor=owner, model=model, name="production", version_number=1)
    response = infer_json(gateway_url, token, "picky", request_body(np.full((1, 4), 500, np.float32)))
    assert response.status_code == 422, response.text
    assert "'picky' v1 raised" in response.json()["error"] and "too large" in response.json()["error"]
    response = infer_json(gateway_url, token, "picky", request_body(np.ones((1, 4), np.float32)))
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [2, 2, 2, 2]


def test_no_worker_on_the_queue_is_refused_503_at_once(gateway_url, token, served, owner, registered_model,
                                                       service_environment):  # fmt: skip
    RegisteredModel.objects.filter(pk=registered_model.pk).update(serving_queue="nobody-listens")
    services.model_update(actor=owner, model=RegisteredModel.objects.get(pk=registered_model.pk), description="moved")
    started = time.monotonic()
    response = infer_json(gateway_url, token, "iris", request_body(FEATURES))
    assert response.status_code == 503, response.text
    assert "No live worker serves queue 'nobody-listens'" in response.json()["error"]
    assert response.headers["Retry-After"]
    # Known from the workers' heartbeats: not after the gateway's INFERENCE_TIMEOUT_SECONDS.
    timeout = float(service_environment["INFERENCE_TIMEOUT_SECONDS"])
    assert time.monotonic() - started < timeout
