"""Open Inference Protocol v2 over gRPC end to end: an unmodified tritonclient.grpc client, the
`manage.py grpcserve` process and a real worker, through the same cases as the REST suite."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from accounts import services as token_services
from inference import validation
from inference.grpc import predict_v2_pb2 as pb
from inference.grpc import predict_v2_pb2_grpc as pb_grpc
from portal import demo
from registry import services
from registry.models import RegisteredModel
from tests.conftest import upload_file
from tests.integration.conftest import FEATURES, expected
from tests.integration.test_datatypes_and_faults import DATATYPES, NAMES, Echo, publish
from tests.integration.test_text_models import FILL, archives, serve  # noqa: F401 - archives is a fixture
from tests.worker import METRICS_AUTH, until

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def rpc(grpc_address: str, token: str) -> Any:
    with grpcclient.InferenceServerClient(url=grpc_address) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    """gRPC metadata keys are lowercase."""
    return {"authorization": f"Bearer {token}"}


def features(array: np.ndarray, name: str = "features", datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def when_loaded(rpc: grpcclient.InferenceServerClient, model: str, inputs: list[Any], **kwargs: Any) -> Any:
    """An inference, retried while the worker answers UNAVAILABLE "loading" (a Hugging Face or
    torch.export load takes seconds on a busy machine, longer than the test timeout's half)."""
    deadline = time.monotonic() + 90
    while True:
        try:
            return rpc.infer(model, inputs, **kwargs)
        except InferenceServerException as exc:
            if "is loading" not in exc.message() or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_health_readiness_and_metadata(rpc, token, served):
    assert rpc.is_server_live()
    assert rpc.is_server_ready()
    assert rpc.is_model_ready("iris", headers=bearer(token))
    assert rpc.is_model_ready("iris", model_version="1", headers=bearer(token))
    metadata = rpc.get_model_metadata("iris", headers=bearer(token))
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("iris", ["1"], "pytorch_torchscript")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("features", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("output__0", "FP32", [-1, 3])]
    server = rpc.get_server_metadata()
    assert server.name == "maas-portal" and list(server.extensions) == ["binary_tensor_data"]


def test_raw_tensors_both_ways_with_requested_output_and_id_echo(rpc, token, served, model_files):
    wanted = grpcclient.InferRequestedOutput("output__0")
    result = rpc.infer("iris", [features(FEATURES)], outputs=[wanted], request_id="req-7", headers=bearer(token))
    np.testing.assert_allclose(result.as_numpy("output__0"), expected(model_files, FEATURES), atol=1e-5)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-7", "iris", "1")
    assert response.parameters["batch_size"].int64_param >= 2
    assert response.parameters["compute_ms"].double_param >= 0
    # Without requested outputs: all of them; a version number and the production alias alike.
    result = rpc.infer("iris", [features(FEATURES)], model_version="1", headers=bearer(token))
    assert result.as_numpy("output__0").shape == (2, 3)


def test_every_numeric_datatype_round_trips(rpc, token, owner, tmp_path):
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
    inputs = [features(arrays[name], name, datatype) for name, datatype in zip(NAMES, DATATYPES, strict=True)]
    result = when_loaded(rpc, "echo", inputs, headers=bearer(token))
    for i, name in enumerate(NAMES):
        got = result.as_numpy(f"output__{i}")
        want = ~arrays[name] if name == "b" else arrays[name] + 1
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_bytes_texts_of_a_text_model(rpc, token, owner, archives):  # noqa: F811 - the archives fixture
    serve(owner, "bert-mini", archives["fill-mask"], "fill-mask")
    texts = np.array([FILL.encode(), b"Rome is the [MASK] of Italy."], dtype=np.object_)
    result = when_loaded(rpc, "bert-mini", [features(texts, "text", "BYTES")], headers=bearer(token),
                         parameters={"top_k": 3})  # fmt: skip
    words = result.as_numpy("token_str")
    assert words.shape == (2, 3) and all(isinstance(word, bytes) for word in words.ravel())
    assert (np.diff(result.as_numpy("score"), axis=1) <= 0).all()
    error = refused(lambda: rpc.infer("bert-mini", [features(texts, "text", "BYTES")], headers=bearer(token),
                                      parameters={"top_k": "many"}))  # fmt: skip
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "top_k" in error.message()


@pytest.mark.parametrize(
    ("inputs", "outputs", "fragment"),
    [
        ([features(np.zeros((1, 5), np.float32))], None, "input 'features' has shape [1, 5]"),
        ([features(np.zeros((1, 4), np.float64), datatype="FP64")], None, "is FP64, the model takes FP32"),
        ([features(np.zeros((1, 4), np.float32), name="other")], None, "unknown input 'other'"),
        ([features(np.zeros((1, 4), np.float32))], [grpcclient.InferRequestedOutput("nope")], "'nope'"),
    ],
)
def test_bad_requests_are_invalid_argument_with_the_rest_message(rpc, token, served, inputs, outputs, fragment):
    error = refused(lambda: rpc.infer("iris", inputs, outputs=outputs, headers=bearer(token)))
    assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert fragment in error.message()


def test_size_limits_are_resource_exhausted(rpc, token, served, service_environment):
    # Over INFERENCE_MAX_ELEMENTS (100,000 in the tests) but within the message limit: the REST message.
    error = refused(lambda: rpc.infer("iris", [features(np.zeros((26000, 4), np.float32))], headers=bearer(token)))
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED" and "over the limit of 100000" in error.message()
    # Over GRPC_MAX_MESSAGE_BYTES (INFERENCE_MAX_BODY_BYTES by default: 1 MiB here): refused unread.
    limit = int(service_environment["INFERENCE_MAX_BODY_BYTES"])
    big = np.zeros((limit // 16 + 1, 4), np.float32)
    error = refused(lambda: rpc.infer("iris", [features(big)], headers=bearer(token)))
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in error.message()
    assert rpc.infer("iris", [features(FEATURES)], headers=bearer(token)).as_numpy("output__0").shape == (2, 3)


def test_tokens_access_unknown_and_not_ready(rpc, token, served, owner, registered_model, model_files, outsider):
    error = refused(lambda: rpc.infer("iris", [features(FEATURES)]))
    assert error.status() == "StatusCode.UNAUTHENTICATED" and "Authorization: Bearer" in error.message()
    error = refused(lambda: rpc.infer("iris", [features(FEATURES)], headers=bearer("mp_00000000_nope")))
    assert error.status() == "StatusCode.UNAUTHENTICATED" and "invalid, expired or revoked" in error.message()
    error = refused(lambda: rpc.infer("nope", [features(FEATURES)], headers=bearer(token)))
    assert error.status() == "StatusCode.NOT_FOUND" and "'nope' not found" in error.message()
    stranger = token_services.token_create(user=outsider, name="x")[1]
    for call in (lambda: rpc.infer("iris", [features(FEATURES)], headers=bearer(stranger)),
                 lambda: rpc.get_model_metadata("iris", headers=bearer(stranger)),
                 lambda: rpc.is_model_ready("iris", headers=bearer(stranger))):  # fmt: skip
        error = refused(call)
        assert error.status() == "StatusCode.NOT_FOUND", "another user's private model must look absent"
    pending = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    error = refused(lambda: rpc.infer("iris", [features(FEATURES)], model_version=str(pending.version),
                                      headers=bearer(token)))  # fmt: skip
    assert error.status() == "StatusCode.UNAVAILABLE" and "pending" in error.message()
    assert not rpc.is_model_ready("iris", model_version=str(pending.version), headers=bearer(token))
    error = refused(lambda: rpc.infer("iris", [features(FEATURES)], model_version="9", headers=bearer(token)))
    assert error.status() == "StatusCode.NOT_FOUND"
    error = refused(lambda: rpc.infer("bad name!", [features(FEATURES)], headers=bearer(token)))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"


def test_model_that_raises_is_invalid_argument_naming_it(rpc, token, owner, tmp_path):
    class Picky(torch.nn.Module):
        def forward(self, features: torch.Tensor) -> torch.Tensor:
            if bool(features.sum() > 1000.0):
                raise RuntimeError("input too large for this model")
            return features * 2

    model = services.model_create(actor=owner, name="picky")
    version = upload_file(owner, model, demo.save_torchscript(Picky(), tmp_path / "picky.pt"), enqueue=False)
    assert validation.version_validate(version.pk) == "ready"
    services.alias_set(actor=owner, model=model, name="production", version_number=1)
    error = refused(lambda: rpc.infer("picky", [features(np.full((1, 4), 500, np.float32))], headers=bearer(token)))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "'picky' v1 raised" in error.message()
    result = rpc.infer("picky", [features(np.ones((1, 4), np.float32))], headers=bearer(token))
    assert result.as_numpy("output__0").tolist() == [[2, 2, 2, 2]]


def test_no_worker_on_the_queue_is_unavailable_with_retry_info(grpc_address, token, served, owner,
                                                               registered_model):  # fmt: skip
    RegisteredModel.objects.filter(pk=registered_model.pk).update(serving_queue="nobody-listens")
    services.model_update(actor=owner, model=RegisteredModel.objects.get(pk=registered_model.pk), description="moved")
    # A plain grpc call, to read the trailers tritonclient does not show.
    request = pb.ModelInferRequest(model_name="iris", raw_input_contents=[FEATURES.tobytes()])
    request.inputs.add(name="features", datatype="FP32", shape=list(FEATURES.shape))
    with grpc.insecure_channel(grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, metadata=tuple(bearer(token).items()), timeout=20)
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "No live worker serves queue 'nobody-listens'" in error.details()
    trailers = dict(error.trailing_metadata())
    assert int(trailers["retry-after"]) >= 1 and trailers["grpc-status-details-bin"]


def test_concurrent_calls_are_coalesced_and_counted_as_grpc(rpc, token, served, model_files, gateway_url):
    rows = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)

    def one(i: int) -> Any:
        return rpc.infer("iris", [features(rows[i : i + 1])], headers=bearer(token)).get_response()

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(one, range(64)))
    got = np.concatenate([np.frombuffer(a.raw_output_contents[0], np.float32).reshape(1, 3) for a in answers])
    np.testing.assert_allclose(got, expected(model_files, rows), atol=1e-5)
    assert max(a.parameters["batch_size"].int64_param for a in answers) > 1

    def counted() -> bool:
        text = requests.get(f"{gateway_url}/metrics", headers=METRICS_AUTH, timeout=5).text
        return 'maas_requests_total{model="iris",source="grpc",status="200",version="1"}' in text

    until(counted, 20, "gRPC predictions in /metrics")
