"""Open Inference Protocol v2 codec: requested outputs and JSON / binary responses."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from inference.protocol import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH_HEADER,
    JSON_CONTENT_TYPE,
    encode_response,
    error_body,
)
from tests.inference.protocol_cases import (
    binary_body,
    decode,
    json_body,
    signature,
    split_response,
    tensor,
    x_json,
)

# --- requested outputs and binary responses -----------------------------------------------------


def test_requested_outputs_resolve_binary_per_output():
    body = json_body(
        tensor("x", "FP32", [2, 3], [0] * 6),
        outputs=[{"name": "z", "parameters": {"binary_data": True}}, {"name": "y"}],
    )
    request = decode(body)
    assert request.requested_outputs == [("z", True), ("y", False)]
    assert request.binary_output_names(["y", "z"]) == {"z"}


def test_binary_data_output_makes_every_output_binary_unless_overridden():
    body = json_body(
        tensor("x", "FP32", [2, 3], [0] * 6),
        parameters={"binary_data_output": True},
        outputs=[{"name": "y"}, {"name": "z", "parameters": {"binary_data": False}}],
    )
    request = decode(body)
    assert request.binary_output_default is True
    assert request.requested_outputs == [("y", True), ("z", False)]
    assert request.binary_output_names(["y", "z"]) == {"y"}
    assert request.binary_output_names(["y", "unrequested"]) == {"y"}


def test_binary_data_output_without_outputs_list_covers_all():
    request = decode(json_body(tensor("x", "FP32", [2, 3], [0] * 6), parameters={"binary_data_output": True}))
    assert request.requested_outputs is None
    assert request.binary_output_names(["y", "z"]) == {"y", "z"}
    assert decode(x_json()).binary_output_names(["y", "z"]) == set()


def test_empty_outputs_list_means_all_outputs():
    assert decode(json_body(tensor("x", "FP32", [2, 3], [0] * 6), outputs=[])).requested_outputs is None


def test_any_output_name_is_accepted_when_the_signature_lists_none():
    sig = signature(("x", "FP32", [2, 3]))
    request = decode(json_body(tensor("x", "FP32", [2, 3], [0] * 6), outputs=[{"name": "anything"}]), sig)
    assert request.requested_outputs == [("anything", False)]


def test_response_mixes_json_and_binary_outputs_in_output_order():
    y = np.array([[1.5, -2.0]], dtype=np.float32)
    z = np.array([2**40, -3], dtype=np.int64)
    flags = np.array([True, False, True])
    words = np.array([b"hi", b"", b"\x00\xff"], dtype=object)
    outputs = [("y", "FP32", y), ("flags", "BOOL", flags), ("z", "INT64", z), ("words", "BYTES", words)]
    body, headers = encode_response("m", "3", "abc", outputs, {"z", "y", "words"})
    assert headers == {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER: headers[HEADER_LENGTH_HEADER]}
    document, rest = split_response(body, headers)
    assert document["model_name"] == "m"
    assert document["model_version"] == "3"
    assert document["id"] == "abc"
    y_out, flags_out, z_out, words_out = document["outputs"]
    assert y_out == {"name": "y", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
    assert flags_out == {"name": "flags", "datatype": "BOOL", "shape": [3], "data": [True, False, True]}
    assert z_out == {"name": "z", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 16}}
    words_raw = struct.pack("<I", 2) + b"hi" + struct.pack("<I", 0) + struct.pack("<I", 2) + b"\x00\xff"
    assert words_out["parameters"] == {"binary_data_size": len(words_raw)}
    assert "data" not in words_out
    assert rest == y.astype("<f4").tobytes() + z.astype("<i8").tobytes() + words_raw


def test_binary_bool_output_is_one_byte_per_element():
    body, headers = encode_response("m", "1", None, [("b", "BOOL", np.array([True, False, True]))], {"b"})
    _, rest = split_response(body, headers)
    assert rest == b"\x01\x00\x01"


def test_binary_fp16_output():
    values = np.array([0.5, -1.0, np.inf], dtype=np.float16)
    body, headers = encode_response("m", "1", None, [("h", "FP16", values)], {"h"})
    document, rest = split_response(body, headers)
    assert document["outputs"][0]["parameters"] == {"binary_data_size": 6}
    assert rest == values.astype("<f2").tobytes()


def test_response_round_trips_through_decode_of_its_own_binary_layout():
    """A binary response body has the same layout as a binary request: decode it back."""
    y = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    body, headers = encode_response("m", "1", None, [("x", "FP32", y)], {"x"})
    document, raw = split_response(body, headers)
    assert "id" not in document
    document["inputs"] = document.pop("outputs")
    request_body, length = binary_body(document, raw)
    reparsed = decode(request_body, header_length=length)
    np.testing.assert_array_equal(reparsed.inputs["x"], y)


def test_id_is_echoed_only_when_given():
    request = decode(json_body(tensor("x", "FP32", [2, 3], [0] * 6), id="r-1"))
    with_id, _ = encode_response("m", "1", request.id, [("y", "FP32", np.zeros(1, np.float32))], set())
    without_id, _ = encode_response("m", "1", None, [("y", "FP32", np.zeros(1, np.float32))], set())
    assert json.loads(with_id)["id"] == "r-1"
    assert "id" not in json.loads(without_id)


def test_empty_model_version_is_left_out():
    body, _ = encode_response("m", "", None, [("y", "FP32", np.zeros(1, np.float32))], set())
    assert json.loads(body) == {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [0.0]}],
    }


def test_binary_names_that_are_not_outputs_leave_a_json_response():
    body, headers = encode_response("m", "1", None, [("y", "FP32", np.ones(2, np.float32))], {"other"})
    assert headers == {"Content-Type": JSON_CONTENT_TYPE}
    assert json.loads(body)["outputs"][0]["data"] == [1.0, 1.0]


def test_json_output_is_cast_to_its_datatype():
    body, _ = encode_response("m", "1", None, [("y", "INT32", np.array([[1, 2]], dtype=np.int64))], set())
    assert json.loads(body)["outputs"][0] == {"name": "y", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]}


def test_non_utf8_bytes_output_cannot_go_as_json():
    with pytest.raises(ValueError, match="not UTF-8"):
        encode_response("m", "1", None, [("w", "BYTES", np.array([b"\xff"], dtype=object))], set())


def test_error_body():
    assert json.loads(error_body("input 'x' is missing")) == {"error": "input 'x' is missing"}
