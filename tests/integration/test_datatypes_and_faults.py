"""Every numeric datatype through a real model, variable-length INT64 sequences, and a broker outage."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as triton

from inference import validation
from portal import demo
from registry import services
from tests.conftest import upload_file
from tests.integration.conftest import auth, infer_json, infer_json_when_loaded
from tests.worker import free_port, start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]

DATATYPES = ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


class Echo(torch.nn.Module):
    """Returns every input unchanged, plus one: exercises each datatype both ways."""

    def forward(
        self, b: torch.Tensor, u8: torch.Tensor, i8: torch.Tensor, i16: torch.Tensor, i32: torch.Tensor,
        i64: torch.Tensor, f16: torch.Tensor, f32: torch.Tensor, f64: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
               torch.Tensor, torch.Tensor]:  # fmt: skip
        return (~b, u8 + 1, i8 + 1, i16 + 1, i32 + 1, i64 + 1, f16 + 1, f32 + 1, f64 + 1)


NAMES = ["b", "u8", "i8", "i16", "i32", "i64", "f16", "f32", "f64"]


def publish(owner: Any, name: str, path: Path, signature: dict[str, Any]) -> None:
    model = services.model_create(actor=owner, name=name)
    version = upload_file(owner, model, path, signature=signature, enqueue=False)
    assert validation.version_validate(version.pk) == "ready", version
    services.alias_set(actor=owner, model=model, name="production", version_number=version.version)


@pytest.mark.parametrize("binary", [False, True])
def test_every_numeric_datatype_round_trips(client, token, owner, tmp_path, binary):
    signature = {
        "inputs": [{"name": n, "datatype": t, "shape": [-1, 3]} for n, t in zip(NAMES, DATATYPES, strict=True)]
    }
    publish(owner, "echo", demo.save_torchscript(Echo(), tmp_path / "echo.pt"), signature)
    rng = np.random.default_rng(0)
    arrays = {
        "b": rng.random((2, 3)) > 0.5,
        **{n: rng.integers(0, 100, (2, 3)).astype(t) for n, t in
           [("u8", np.uint8), ("i8", np.int8), ("i16", np.int16), ("i32", np.int32), ("i64", np.int64)]},
        **{n: rng.normal(size=(2, 3)).astype(t) for n, t in
           [("f16", np.float16), ("f32", np.float32), ("f64", np.float64)]},
    }  # fmt: skip
    inputs = []
    for name, datatype in zip(NAMES, DATATYPES, strict=True):
        tensor = triton.InferInput(name, [2, 3], datatype)
        tensor.set_data_from_numpy(arrays[name], binary_data=binary)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(f"output__{i}", binary_data=binary) for i in range(len(NAMES))]
    result = client.infer("echo", inputs, outputs=outputs, headers=auth(token))
    for i, name in enumerate(NAMES):
        got = result.as_numpy(f"output__{i}")
        want = ~arrays[name] if name == "b" else arrays[name] + 1
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_int64_token_ids_of_different_lengths_are_served_together(gateway_url, token, owner, tmp_path):
    model = demo.tiny_encoder()
    publish(owner, "sentiment", demo.save_encoder(model, tmp_path / "encoder.pt2"), demo.ENCODER_SIGNATURE)
    rng = np.random.default_rng(0)
    sequences = [rng.integers(0, 1000, (1, length)) for length in (3, 9, 17, 9, 5, 31, 2, 12)]

    def one(tokens: np.ndarray) -> np.ndarray:
        body = {
            "inputs": [
                {"name": "tokens", "shape": list(tokens.shape), "datatype": "INT64", "data": tokens.ravel().tolist()}
            ]
        }
        response = infer_json(gateway_url, token, "sentiment", body)
        assert response.status_code == 200, response.text
        return np.array(response.json()["outputs"][0]["data"], dtype=np.float32)

    # Loaded first (its load may outlast the prediction timeout): then the lengths are served together.
    warm = {"inputs": [{"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}
    loaded = infer_json_when_loaded(gateway_url, token, "sentiment", warm)
    assert loaded.status_code == 200, loaded.text
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, sequences))
    with torch.inference_mode():
        for tokens, answer in zip(sequences, answers, strict=True):
            np.testing.assert_allclose(answer, model(torch.from_numpy(tokens)).numpy().ravel(), atol=1e-4)
    metadata = requests.get(f"{gateway_url}/v2/models/sentiment", headers=auth(token), timeout=5).json()
    assert metadata["inputs"] == [{"name": "tokens", "datatype": "INT64", "shape": [-1, -1]}]


def test_broker_outage_answers_503_at_once(token, served, service_environment, shared_data_dir, processes):
    dead = free_port()  # nothing listens there
    # A long prediction timeout: the 503 must come from the refused connection, not from waiting.
    environment = service_environment | {"INFERENCE_REDIS_URL": f"redis://127.0.0.1:{dead}/0",
                                         "INFERENCE_TIMEOUT_SECONDS": "60"}  # fmt: skip
    _, url = start_gateway(processes, environment, shared_data_dir / "gateway-no-redis.log")
    started = time.monotonic()
    response = infer_json(url, token, "iris", {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                                           "data": [1, 2, 3, 4]}]})  # fmt: skip
    assert response.status_code == 503, response.text
    assert "broker is unavailable" in response.json()["error"]
    assert time.monotonic() - started < 20, "answered by the refused connection, long before the timeout"
    assert requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 503


def test_friendly_endpoint_answers_503_when_the_broker_is_down(live_server, owner, served, settings, monkeypatch):
    from accounts import services as token_services
    from core import redis as shared_redis

    shared_redis.reset()
    settings.INFERENCE_REDIS_URL = "redis://127.0.0.1:1/0"
    secret = token_services.token_create(user=owner, name="p")[1]
    body = {"inputs": {"features": [1, 2, 3, 4]}}
    response = requests.post(
        f"{live_server.url}/api/v1/models/iris/predict/", json=body, headers=auth(secret), timeout=10
    )
    assert response.status_code == 503 and "broker is unavailable" in response.json()["error"]
    shared_redis.reset()
