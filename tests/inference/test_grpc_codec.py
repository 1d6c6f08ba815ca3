"""gRPC inference messages to checked tensors (raw or typed contents) and answers back."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from core.errors import InvalidInput, PayloadTooLarge
from inference.grpc import codec
from inference.grpc import predict_v2_pb2 as pb

SIGNATURE = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}, {"name": "label", "datatype": "BYTES"}],
}
TEXTS = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}], "outputs": []}


def request_of(datatype: str = "FP32", shape: tuple[int, ...] = (1, 4), name: str = "features") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    return request


def test_raw_contents_are_decoded_against_the_signature():
    request = request_of(shape=(2, 4))
    request.raw_input_contents.append(np.arange(8, dtype="<f4").tobytes())
    inputs = codec.inputs_of(request, SIGNATURE, 1000)
    np.testing.assert_array_equal(inputs["features"], np.arange(8, dtype=np.float32).reshape(2, 4))


def test_typed_contents_are_decoded_too():
    request = request_of()
    request.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])
    np.testing.assert_array_equal(codec.inputs_of(request, SIGNATURE, 1000)["features"], [[1, 2, 3, 4]])
    texts = request_of("BYTES", (2,), "text")
    texts.inputs[0].contents.bytes_contents.extend([b"a", "é".encode()])
    assert codec.inputs_of(texts, TEXTS, 1000)["text"].tolist() == [b"a", "é".encode()]


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda r: r.raw_input_contents.extend([b"", b""]), "2 entries for 1 inputs"),
        (lambda r: r.raw_input_contents.append(b"\x00" * 12), "binary_data_size 12 does not match shape [1, 4]"),
        (lambda r: r.inputs[0].contents.int_contents.extend([1, 2, 3, 4]), "its values go in fp32_contents"),
        (lambda r: r.inputs[0].contents.fp32_contents.extend([1, 2, 3]), "needs 4 values, data has 3"),
        (lambda r: (r.inputs[0].contents.fp32_contents.append(1), r.raw_input_contents.append(b"")), "both"),
        (
            lambda r: (
                r.inputs.add(name="features", datatype="FP32", shape=[1, 4]),
                r.raw_input_contents.extend([b"\x00" * 16] * 2),
            ),
            "appears more than once",
        ),
    ],
)
def test_malformed_requests_name_the_problem(build, fragment):
    request = request_of()
    build(request)
    with pytest.raises(InvalidInput, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        codec.inputs_of(request, SIGNATURE, 1000)


def test_fp16_has_no_typed_contents_and_a_wrong_datatype_or_shape_is_refused():
    request = request_of("FP16")
    request.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])
    with pytest.raises(InvalidInput, match="FP16 has no typed contents"):
        codec.inputs_of(request, SIGNATURE, 1000)
    request = request_of("FP64")
    request.raw_input_contents.append(np.zeros(4).tobytes())
    with pytest.raises(InvalidInput, match="is FP64, the model takes FP32"):
        codec.inputs_of(request, SIGNATURE, 1000)
    request = request_of("NOPE")
    request.raw_input_contents.append(b"")
    with pytest.raises(InvalidInput, match="datatype 'NOPE' is not one of"):
        codec.inputs_of(request, SIGNATURE, 1000)
    with pytest.raises(InvalidInput, match="at least one input"):
        codec.inputs_of(pb.ModelInferRequest(model_name="iris"), SIGNATURE, 1000)


def test_the_element_limit_is_payload_too_large():
    request = request_of(shape=(300, 4))
    request.raw_input_contents.append(np.zeros((300, 4), "<f4").tobytes())
    with pytest.raises(PayloadTooLarge, match="over the limit of 1000"):
        codec.inputs_of(request, SIGNATURE, 1000)


def test_requested_outputs_are_checked():
    request = request_of()
    assert codec.outputs_of(request, SIGNATURE) is None
    request.outputs.add(name="label")
    assert codec.outputs_of(request, SIGNATURE) == ["label"]
    request.outputs.add(name="nope")
    with pytest.raises(InvalidInput, match="'nope' is not an output"):
        codec.outputs_of(request, SIGNATURE)


def test_the_answer_carries_raw_outputs_and_typed_parameters():
    scores = np.array([[0.1, 0.2, 0.7]], np.float32)
    labels = np.array([b"virginica"], dtype=object)
    parameters = {"queue_ms": 0.5, "batch_size": 4, "worker": "w1", "cached": True}
    response = codec.response_of("iris", 2, "req-1", [("scores", "FP32", scores), ("label", "BYTES", labels)],
                                 parameters)  # fmt: skip
    assert (response.model_name, response.model_version, response.id) == ("iris", "2", "req-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("scores", "FP32", [1, 3]),
                                                                              ("label", "BYTES", [1])]  # fmt: skip
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4"), scores.ravel())
    assert response.raw_output_contents[1] == struct.pack("<I", 9) + b"virginica"
    assert codec.parameters_of(response.parameters) == parameters


def test_model_metadata_keeps_variable_dimensions():
    outputs = [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]
    metadata = {"name": "iris", "versions": ["1", "2"], "platform": "pytorch_torchscript",
                "inputs": SIGNATURE["inputs"], "outputs": outputs}  # fmt: skip
    response = codec.metadata_response(metadata)
    assert list(response.versions) == ["1", "2"] and list(response.inputs[0].shape) == [-1, 4]
    assert response.outputs[0].name == "scores"
