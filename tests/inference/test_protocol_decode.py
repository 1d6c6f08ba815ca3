"""Open Inference Protocol v2 codec: decoding JSON and binary tensor data against a signature."""

from __future__ import annotations

import json
import math
import re
import struct

import numpy as np
import pytest

from core.errors import InvalidInput
from inference.protocol import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH_HEADER,
    JSON_CONTENT_TYPE,
    encode_response,
    tensors_decode,
)
from tests.inference.protocol_cases import (
    NUMERIC_VALUES,
    NUMPY,
    binary_body,
    decode,
    json_body,
    signature,
    split_response,
    tensor,
    x_json,
)

# --- JSON data ----------------------------------------------------------------------------------


def test_parsed_inputs_decode_as_the_same_inputs_in_a_body_do():
    sig = signature(("a", "FP32", [-1, 2]), ("b", "INT64", [-1]))
    inputs = [tensor("b", "INT64", [2], [7, 8]), tensor("a", "FP32", [2, 2], [[1.5, float("nan")], [3, 4]])]
    parsed = tensors_decode(inputs, [None, None], sig, max_elements=100)
    body = decode(json_body(*inputs), sig).inputs
    assert list(parsed) == list(body) == ["a", "b"]
    for name in parsed:
        assert parsed[name].dtype == body[name].dtype
        np.testing.assert_array_equal(parsed[name], body[name])
    for wrong, message in [
        ([tensor("a", "FP32", [2, 3], [[0] * 3] * 2), inputs[0]], "has shape [2, 3], the model takes [-1, 2]"),
        ([inputs[1]], "input 'b' is missing"),
        ([tensor("a", "FP32", [2, 2], [[1, "x"], [3, 4]]), inputs[0]], "FP32 data must be numbers"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(message)):
            tensors_decode(wrong, [None] * len(wrong), sig, max_elements=100)
        with pytest.raises(InvalidInput, match=re.escape(message)):
            decode(json_body(*wrong), sig)


@pytest.mark.parametrize("datatype", list(NUMERIC_VALUES))
def test_json_flat_data_round_trips_every_numeric_datatype(datatype):
    values = NUMERIC_VALUES[datatype]
    sig = signature(("t", datatype, [2, 2]))
    request = decode(json_body(tensor("t", datatype, [2, 2], values)), sig)
    array = request.inputs["t"]
    assert array.dtype == NUMPY[datatype]
    assert array.shape == (2, 2)
    assert array.reshape(-1).tolist() == values

    body, headers = encode_response("m", "1", None, [("t", datatype, array)], set())
    assert headers == {"Content-Type": JSON_CONTENT_TYPE}
    output = json.loads(body)["outputs"][0]
    assert output == {"name": "t", "datatype": datatype, "shape": [2, 2], "data": values}
    assert all(type(v) is type(values[0]) for v in output["data"])


@pytest.mark.parametrize("datatype", list(NUMERIC_VALUES))
def test_json_nested_data_round_trips_every_numeric_datatype(datatype):
    values = NUMERIC_VALUES[datatype]
    nested = [[values[:2]], [values[2:]]]
    sig = signature(("t", datatype, [2, 1, 2]))
    array = decode(json_body(tensor("t", datatype, [2, 1, 2], nested)), sig).inputs["t"]
    assert array.dtype == NUMPY[datatype]
    assert array.tolist() == nested

    body, _ = encode_response("m", "1", None, [("t", datatype, array)], set())
    assert json.loads(body)["outputs"][0]["data"] == values


def test_json_fp16_is_decoded_to_float16_and_encoded_as_floats():
    sig = signature(("h", "FP16", [3]))
    array = decode(json_body(tensor("h", "FP16", [3], [0.1, 1, -2.5])), sig).inputs["h"]
    assert array.dtype == np.float16
    assert array.tolist() == [np.float16(0.1), 1.0, -2.5]
    body, _ = encode_response("m", "1", None, [("h", "FP16", array)], set())
    data = json.loads(body)["outputs"][0]["data"]
    assert data == [float(np.float16(0.1)), 1.0, -2.5]
    assert all(isinstance(v, float) for v in data)


def test_json_float_data_accepts_integers():
    array = decode(x_json([[1, 2.5, 3], [4, 5, 6]])).inputs["x"]
    assert array.dtype == np.float32
    assert array.tolist() == [[1.0, 2.5, 3.0], [4.0, 5.0, 6.0]]


def test_json_bytes_input_becomes_object_array_of_utf8_bytes():
    sig = signature(("s", "BYTES", [-1, 2]))
    array = decode(json_body(tensor("s", "BYTES", [2, 2], [["a", "é"], ["", "xyz"]])), sig).inputs["s"]
    assert array.dtype == object
    assert array.shape == (2, 2)
    assert array.tolist() == [[b"a", "é".encode()], [b"", b"xyz"]]

    body, _ = encode_response("m", "1", None, [("s", "BYTES", array)], set())
    assert json.loads(body)["outputs"][0] == {
        "name": "s",
        "datatype": "BYTES",
        "shape": [2, 2],
        "data": ["a", "é", "", "xyz"],
    }


def test_nan_and_infinity_tokens_pass_through_both_ways():
    body = (
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [NaN, Infinity, -Infinity, 1, 2, 3]}]}'
    )
    array = decode(body).inputs["x"]
    assert math.isnan(array[0, 0])
    assert array[0, 1] == np.inf
    assert array[0, 2] == -np.inf

    out, _ = encode_response("m", "1", None, [("y", "FP32", array.reshape(-1))], set())
    assert b"[NaN,Infinity,-Infinity,1.0,2.0,3.0]" in out
    data = json.loads(out)["outputs"][0]["data"]
    assert math.isnan(data[0])
    assert data[1:3] == [math.inf, -math.inf]


def test_finite_json_answer_decodes_to_the_exact_values():
    outputs = [
        ("y", "FP32", np.array([[0.1, -2.5e-8, 3.0]], dtype=np.float32)),
        ("i", "INT64", np.array([-(2**62), 7], dtype=np.int64)),
        ("b", "BOOL", np.array([True, False])),
        ("s", "BYTES", np.array([b"\xc3\xa9"], dtype=object)),
    ]
    parameters = {"queue_ms": 0.25, "batch_size": 3, "worker": "w:1"}
    out, headers = encode_response("m", "1", "req-1", outputs, set(), parameters)
    document = json.loads(out)
    assert document == {
        "model_name": "m", "model_version": "1", "id": "req-1", "parameters": parameters,
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [1, 3], "data": [float(v) for v in outputs[0][2].ravel()]},
            {"name": "i", "datatype": "INT64", "shape": [2], "data": [-(2**62), 7]},
            {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
            {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["é"]},
        ],
    }  # fmt: skip
    assert headers == {"Content-Type": "application/json"}


def test_nan_passes_for_fp16_and_fp64():
    sig = signature(("h", "FP16", [2]), ("d", "FP64", [2]))
    body = b'{"inputs": [{"name": "h", "datatype": "FP16", "shape": [2], "data": [NaN, -Infinity]},'
    body += b' {"name": "d", "datatype": "FP64", "shape": [2], "data": [Infinity, NaN]}]}'
    inputs = decode(body, sig).inputs
    assert math.isnan(inputs["h"][0])
    assert inputs["h"][1] == -np.inf
    assert inputs["d"][0] == np.inf
    assert math.isnan(inputs["d"][1])


def test_variable_dimensions_match_any_size():
    sig = signature(("x", "FP32", [-1, 3]), ("b", "INT64", [-1]))
    request = decode(json_body(tensor("x", "FP32", [4, 3], list(range(12))), tensor("b", "INT64", [0], [])), sig)
    assert request.inputs["x"].shape == (4, 3)
    assert request.inputs["b"].shape == (0,)
    assert request.inputs["b"].dtype == np.int64


def test_empty_tensor_from_nested_rows():
    sig = signature(("x", "FP32", [2, 0]))
    assert decode(json_body(tensor("x", "FP32", [2, 0], [[], []])), sig).inputs["x"].shape == (2, 0)


def test_scalar_input_with_empty_shape():
    sig = signature(("s", "INT32", []))
    array = decode(json_body(tensor("s", "INT32", [], [7])), sig).inputs["s"]
    assert array.shape == ()
    assert array.item() == 7


def test_inputs_follow_signature_order_not_request_order():
    sig = signature(("a", "INT32", [1]), ("b", "INT32", [1]))
    request = decode(json_body(tensor("b", "INT32", [1], [2]), tensor("a", "INT32", [1], [1])), sig)
    assert list(request.inputs) == ["a", "b"]


def test_request_defaults():
    request = decode(x_json())
    assert request.id is None
    assert request.parameters == {}
    assert request.requested_outputs is None
    assert request.binary_output_default is False


def test_id_and_parameters_are_kept_and_unknown_top_level_keys_ignored():
    request = decode(
        json_body(tensor("x", "FP32", [2, 3], [0] * 6), id="req-7", model_name="m", parameters={"priority": 2})
    )
    assert request.id == "req-7"
    assert request.parameters == {"priority": 2}


# --- binary data --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "values", "little_endian"),
    [
        ("FP32", [1.5, -2.0, 0.0, 3.25, 2.0**-20, 7.0], "<f4"),
        ("INT64", [-(2**63), -1, 0, 1, 2**40, 2**63 - 1], "<i8"),
        ("BOOL", [True, False, True, True, False, False], "|u1"),
        ("UINT8", [0, 1, 2, 127, 128, 255], "|u1"),
        ("FP16", [0.5, -1.0, 65504.0, 0.0, 2.0, -0.25], "<f2"),
    ],
)
def test_binary_input(datatype, values, little_endian):
    raw = np.asarray(values).astype(little_endian).tobytes()
    sig = signature(("t", datatype, [-1, 3]))
    body, length = binary_body({"inputs": [tensor("t", datatype, [2, 3], size=len(raw))]}, raw)
    array = decode(body, sig, length).inputs["t"]
    assert array.dtype == NUMPY[datatype]
    assert array.shape == (2, 3)
    assert array.reshape(-1).tolist() == values
    assert array.flags.writeable
    assert array.flags.aligned


def test_binary_bytes_input_is_length_prefixed():
    elements = [b"abc", b"", b"\xff\x00z", "é".encode()]
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    sig = signature(("s", "BYTES", [2, 2]))
    body, length = binary_body({"inputs": [tensor("s", "BYTES", [2, 2], size=len(raw))]}, raw)
    array = decode(body, sig, length).inputs["s"]
    assert array.dtype == object
    assert array.tolist() == [elements[:2], elements[2:]]


def test_binary_inputs_are_read_in_request_order_next_to_json_inputs():
    sig = signature(("a", "INT32", [2]), ("b", "FP64", [1]), ("c", "UINT16", [3]))
    a = struct.pack("<2i", -7, 9)
    c = struct.pack("<3H", 1, 2, 65535)
    document = {
        "inputs": [
            tensor("c", "UINT16", [3], size=6),
            tensor("b", "FP64", [1], [0.5]),
            tensor("a", "INT32", [2], size=8),
        ]
    }
    body, length = binary_body(document, c, a)
    inputs = decode(body, sig, length).inputs
    assert list(inputs) == ["a", "b", "c"]
    assert inputs["a"].tolist() == [-7, 9]
    assert inputs["b"].tolist() == [0.5]
    assert inputs["c"].tolist() == [1, 2, 65535]


def test_triton_documentation_example():
    """The request of extension_binary_data.md: UINT32 [2, 2] and BOOL [3], 19 bytes after the JSON."""
    sig = signature(("input0", "UINT32", [2, 2]), ("input1", "BOOL", [3]), outputs=(("output0", "FP32", [3, 2]),))
    document = {
        "model_name": "mymodel",
        "inputs": [tensor("input0", "UINT32", [2, 2], size=16), tensor("input1", "BOOL", [3], size=3)],
        "outputs": [{"name": "output0", "parameters": {"binary_data": True}}],
    }
    body, length = binary_body(document, struct.pack("<4I", 1, 2, 3, 2**32 - 1), b"\x01\x00\x01")
    assert len(body) == length + 19
    request = decode(body, sig, length)
    assert request.inputs["input0"].tolist() == [[1, 2], [3, 2**32 - 1]]
    assert request.inputs["input1"].tolist() == [True, False, True]
    assert request.requested_outputs == [("output0", True)]

    result = np.arange(6, dtype=np.float32).reshape(3, 2)
    out, headers = encode_response(
        "mymodel", "", None, [("output0", "FP32", result)], request.binary_output_names(["output0"])
    )
    document, rest = split_response(out, headers)
    assert headers["Content-Type"] == BINARY_CONTENT_TYPE
    assert document == {
        "model_name": "mymodel",
        "outputs": [{"name": "output0", "datatype": "FP32", "shape": [3, 2], "parameters": {"binary_data_size": 24}}],
    }
    assert len(out) == int(headers[HEADER_LENGTH_HEADER]) + 24
    assert np.frombuffer(rest, dtype="<f4").reshape(3, 2).tolist() == result.tolist()


def test_header_length_without_binary_inputs_is_fine():
    body = x_json()
    assert decode(body, header_length=len(body)).inputs["x"].shape == (2, 3)
