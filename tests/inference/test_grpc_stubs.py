"""The committed gRPC modules are what `make grpc-stubs` generates from the committed .proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import tritonclient.grpc.service_pb2 as triton_pb2

from inference.grpc import predict_v2_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("grpc_stubs", ROOT / "scripts" / "grpc_stubs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regenerating_from_the_proto_gives_the_committed_modules(tmp_path):
    generated = _generator().generate(tmp_path)  # type: ignore[attr-defined]
    assert len(generated) == 3
    for path in generated:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `make grpc-stubs`"


def test_messages_live_beside_tritonclients_own_inference_messages():
    request = pb.ModelInferRequest(model_name="iris", id="7", raw_input_contents=[b"\x00" * 4])
    request.inputs.add(name="features", datatype="FP32", shape=[1, 1])
    request.parameters["top_k"].int64_param = 3
    theirs = triton_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert (theirs.model_name, theirs.id, theirs.inputs[0].shape, theirs.parameters["top_k"].int64_param) == (
        "iris", "7", [1, 1], 3
    )  # fmt: skip
