"""Open Inference Protocol v2 codec: JSON and binary tensor data, signature checks, responses."""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

import numpy as np
import pytest

from core.errors import InvalidInput, PayloadTooLarge
from inference.protocol import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH_HEADER,
    JSON_CONTENT_TYPE,
    InferenceRequest,
    decode_request,
    encode_response,
    error_body,
)

LIMIT = 1_000_000

# Values at the edges of each numeric datatype, four of them so that shape [2, 2] fits.
NUMERIC_VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, False, True],
    "UINT8": [0, 1, 254, 255],
    "UINT16": [0, 1, 65534, 65535],
    "UINT32": [0, 1, 2**32 - 2, 2**32 - 1],
    "UINT64": [0, 1, 2**63, 2**64 - 1],
    "INT8": [-128, -1, 0, 127],
    "INT16": [-(2**15), -1, 0, 2**15 - 1],
    "INT32": [-(2**31), -1, 0, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 2**63 - 1],
    "FP16": [-65504.0, -0.5, 0.0, 1.5],
    "FP32": [-1.5, 0.0, 0.25, 2.0**127],
    "FP64": [-1.0e308, 0.1, 0.0, 2.5],
}
NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def signature(*inputs: tuple[str, str, list[int]], outputs: tuple[tuple[str, str, list[int]], ...] = ()) -> dict:
    """A signature from (name, datatype, shape) triples."""
    return {
        "inputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in inputs],
        "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in outputs],
    }


SIG_X = signature(("x", "FP32", [2, 3]), outputs=(("y", "FP32", [-1]), ("z", "INT64", [-1])))


def tensor(name: str, datatype: str, shape: list[int], data: Any = None, *, size: int | None = None) -> dict:
    """A request input: JSON `data`, or `binary_data_size` when size is given."""
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if size is None:
        entry["data"] = data
    else:
        entry["parameters"] = {"binary_data_size": size}
    return entry


def json_body(*inputs: dict, **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def binary_body(document: dict, *chunks: bytes) -> tuple[bytes, int]:
    """The binary extension's body (JSON then raw bytes) and its Inference-Header-Content-Length."""
    header = json.dumps(document).encode()
    return header + b"".join(chunks), len(header)


def decode(body: bytes, sig: dict = SIG_X, header_length: int | None = None, **options: Any) -> InferenceRequest:
    options.setdefault("max_elements", LIMIT)
    return decode_request(body, header_length, sig, **options)


def x_json(data: Any = None, **changes: Any) -> bytes:
    """A JSON request for SIG_X, with the input's fields overridden by `changes`."""
    entry = tensor("x", "FP32", [2, 3], [1, 2, 3, 4, 5, 6] if data is None else data)
    return json_body({**entry, **changes})


def split_response(body: bytes, headers: dict[str, str]) -> tuple[dict, bytes]:
    """The JSON part of a response and the bytes after it."""
    length = int(headers.get(HEADER_LENGTH_HEADER, len(body)))
    return json.loads(body[:length]), body[length:]


# --- JSON data ----------------------------------------------------------------------------------


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


# --- errors -------------------------------------------------------------------------------------


def assert_invalid(
    fragment: str, body: bytes, sig: dict = SIG_X, header_length: int | None = None, **options: Any
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(fragment)) as caught:
        decode(body, sig, header_length, **options)
    assert caught.value.status_code == 400


SIG_AB = signature(("a", "FP32", [1]), ("b", "INT64", [1]))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (json_body(tensor("a", "FP32", [1], [1])), "input 'b' is missing"),
        (
            json_body(tensor("a", "FP32", [1], [1]), tensor("b", "INT64", [1], [1]), tensor("c", "FP32", [1], [1])),
            "unknown input 'c'",
        ),
        (
            json_body(tensor("a", "FP32", [1], [1]), tensor("a", "FP32", [1], [1]), tensor("b", "INT64", [1], [1])),
            "input 'a' appears more than once",
        ),
        (
            json_body(tensor("a", "FP64", [1], [1]), tensor("b", "INT64", [1], [1])),
            "input 'a' is FP64, the model takes FP32",
        ),
        (
            json_body(tensor("a", "FLOAT", [1], [1]), tensor("b", "INT64", [1], [1])),
            "input 'a': datatype 'FLOAT' is not one of",
        ),
        (
            json_body(tensor("a", "FP32", [1, 1], [1]), tensor("b", "INT64", [1], [1])),
            "input 'a' has shape [1, 1], the model takes [1]",
        ),
        (
            json_body(tensor("a", "FP32", [2], [1, 2]), tensor("b", "INT64", [1], [1])),
            "input 'a' has shape [2], the model takes [1]",
        ),
        (
            json_body(tensor("a", "FP32", [-1], [1]), tensor("b", "INT64", [1], [1])),
            "input 'a': shape must be a list of non-negative integers",
        ),
        (json_body(tensor("a", "FP32", [True], [1]), tensor("b", "INT64", [1], [1])), "input 'a': shape must be"),
        (json_body(tensor("a", "FP32", [1], 1.0), tensor("b", "INT64", [1], [1])), "input 'a': 'data' must be a list"),
        (
            json_body({"name": "a", "datatype": "FP32", "shape": [1]}),
            "input 'a' has neither 'data' nor binary_data_size",
        ),
        (
            json_body({**tensor("a", "FP32", [1], [1]), "parameters": {"binary_data_size": 4}}),
            "input 'a' has both 'data' and binary_data_size",
        ),
        (json_body({**tensor("a", "FP32", [1], [1]), "parameters": []}), "input 'a': 'parameters' must be an object"),
        (
            json_body({"datatype": "FP32", "shape": [1], "data": [1]}),
            "inputs[0] must be an object with a string 'name'",
        ),
        (json_body(), "needs a non-empty 'inputs' list"),
        (b'{"id": 5, "inputs": []}', "request 'id' must be a string"),
        (b'{"parameters": [], "inputs": []}', "request 'parameters' must be an object"),
        (b"[1, 2]", "request JSON must be an object"),
    ],
)
def test_structure_errors(body, fragment):
    assert_invalid(fragment, body, SIG_AB)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([1, 2, 3, 4, 5], "input 'x': shape [2, 3] needs 6 values, data has 5"),
        ([1, 2, 3, 4, 5, 6, 7], "input 'x': shape [2, 3] needs 6 values, data has 7"),
        (
            [[1, 2, 3], [4, 5]],
            "input 'x': nested data does not match shape [2, 3] (depth 1 has 2 items where 3 are needed)",
        ),
        ([[1, 2], [3, 4], [5, 6]], "input 'x': nested data does not match shape [2, 3] (depth 0 has 3 items"),
        ([[1, 2, 3], 4], "depth 1 has a value where 3 are needed"),
        ([[[1], [2], [3]], [[4], [5], [6]]], "input 'x': FP32 data must be numbers, found list"),
        ([1, 2, 3, 4, 5, "6"], "input 'x': FP32 data must be numbers, found string"),
        ([1, 2, 3, 4, 5, True], "input 'x': FP32 data must be numbers, found boolean"),
        ([1, 2, 3, 4, 5, None], "input 'x': FP32 data must be numbers, found null"),
        ([1, 2, 3, 4, 5, 1e39], "input 'x': a value is out of range for FP32"),
        ([1, 2, 3, 4, 5, 10**400], "input 'x': a value is out of range for FP32"),
    ],
)
def test_json_data_errors(data, fragment):
    assert_invalid(fragment, x_json(data))


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("INT64", [1, 2.0], "input 't': INT64 data must be integers, found number"),
        ("INT32", [1, False], "input 't': INT32 data must be integers, found boolean"),
        ("UINT8", [0, 256], "input 't': value 256 is out of range for UINT8"),
        ("UINT64", [-1, 0], "input 't': value -1 is out of range for UINT64"),
        # orjson reads integers past 64 bits as floats, so this is refused as a non-integer.
        ("UINT64", [0, 2**64], "input 't': UINT64 data must be integers"),
        ("INT8", [-129, 0], "input 't': value -129 is out of range for INT8"),
        ("INT64", [0, 2**63], "input 't': value 9223372036854775808 is out of range for INT64"),
        ("BOOL", [True, 1], "input 't': BOOL data must be true or false, found integer"),
        ("BYTES", ["a", 1], "input 't': BYTES data must be strings, found integer"),
        ("FP16", [1.0, 70000.0], "input 't': a value is out of range for FP16"),
    ],
)
def test_json_element_kind_errors(datatype, data, fragment):
    assert_invalid(fragment, json_body(tensor("t", datatype, [2], data)), signature(("t", datatype, [2])))


def test_malformed_json_carries_the_parser_message():
    assert_invalid("request body is not valid JSON: Expecting ',' delimiter", b'{"inputs": [1 2]}')
    assert_invalid("request body is not valid JSON: Expecting value", b"")


def test_non_utf8_json_is_invalid():
    assert_invalid("request body is not valid JSON", b'{"inputs": "\xff"}')


def test_json_nested_deeper_than_the_limit():
    deep = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "parameters": {"a": [[[[1]]]]}}]}'
    # object, inputs, input, parameters, then four lists: eight levels
    assert_invalid("request JSON is nested deeper than 7 levels", deep, max_json_depth=7)
    assert_invalid("input 'x' has neither", deep, max_json_depth=8)


def test_brackets_inside_strings_do_not_count_as_nesting():
    body = json_body(tensor("x", "FP32", [2, 3], [0] * 6), id='[[[[[[["\\"[[[[')
    assert decode(body, max_json_depth=4).id == '[[[[[[["\\"[[[['


def test_pathologically_deep_json_is_refused_without_recursion_error():
    assert_invalid("request JSON is nested deeper than 32 levels", b"[" * 200_000 + b"]" * 200_000)


def test_element_limit_is_payload_too_large():
    sig = signature(("a", "FP32", [-1]), ("b", "FP32", [-1]))
    body = json_body(tensor("a", "FP32", [6], [0] * 6), tensor("b", "FP32", [5], [0] * 5))
    assert decode(body, sig, max_elements=11).inputs["b"].shape == (5,)
    with pytest.raises(
        PayloadTooLarge, match=re.escape("input 'b' brings the request to 11 elements, over the limit of 10")
    ) as caught:
        decode(body, sig, max_elements=10)
    assert caught.value.status_code == 413


def test_element_limit_is_checked_before_data_is_read():
    """A huge declared shape is refused from its numbers alone, whatever the data holds."""
    sig = signature(("a", "FP32", [-1, -1]))
    with pytest.raises(PayloadTooLarge, match="input 'a'"):
        decode(json_body(tensor("a", "FP32", [10**9, 10**9], [])), sig)


@pytest.mark.parametrize(
    ("outputs", "parameters", "fragment"),
    [
        ([{"name": "nope"}], {}, "requested output 'nope' is not an output of the model; it has y, z"),
        ([{"name": "y"}, {"name": "y"}], {}, "output 'y' is requested more than once"),
        ([{"name": "y", "parameters": {"binary_data": "yes"}}], {}, "output 'y': 'binary_data' must be true or false"),
        ([{"name": "y", "parameters": 1}], {}, "output 'y': 'parameters' must be an object"),
        ([{"binary_data": True}], {}, "outputs[0] must be an object with a string 'name'"),
        ({"name": "y"}, {}, "request 'outputs' must be a list"),
        (None, {"binary_data_output": 1}, "request parameters: 'binary_data_output' must be true or false"),
    ],
)
def test_requested_output_errors(outputs, parameters, fragment):
    extra: dict[str, Any] = {"parameters": parameters}
    if outputs is not None:
        extra["outputs"] = outputs
    assert_invalid(fragment, json_body(tensor("x", "FP32", [2, 3], [0] * 6), **extra))


FP32_X = struct.pack("<6f", *range(6))


def x_binary(size: int = 24, *chunks: bytes) -> tuple[bytes, int]:
    return binary_body({"inputs": [tensor("x", "FP32", [2, 3], size=size)]}, *(chunks or (FP32_X,)))


def test_binary_size_must_match_the_shape():
    body, length = x_binary(20, FP32_X[:20])
    assert_invalid(
        "input 'x': binary_data_size 20 does not match shape [2, 3] of FP32 (24 bytes)", body, header_length=length
    )


def test_binary_data_beyond_the_body():
    body, length = x_binary(24, FP32_X[:10])
    assert_invalid(
        "input 'x': binary_data_size 24 runs past the end of the body (10 bytes left)", body, header_length=length
    )


def test_leftover_binary_bytes():
    body, length = x_binary(24, FP32_X, b"\x00\x01\x02")
    assert_invalid("request body has 3 bytes after the binary data of its inputs", body, header_length=length)


def test_header_length_beyond_the_body():
    body, _ = x_binary()
    assert_invalid(
        f"{HEADER_LENGTH_HEADER} {len(body) + 1} is beyond the end of the body ({len(body)} bytes)",
        body,
        header_length=len(body) + 1,
    )


def test_negative_header_length():
    assert_invalid(f"{HEADER_LENGTH_HEADER} -1 is not a valid length", x_json(), header_length=-1)


def test_header_length_cutting_the_json():
    body, length = x_binary()
    assert_invalid("request body is not valid JSON", body, header_length=length - 1)


def test_binary_input_without_header_length():
    body, _ = x_binary()
    document = json.dumps({"inputs": [tensor("x", "FP32", [2, 3], size=24)]}).encode()
    assert_invalid(f"input 'x' has binary_data_size but the request has no {HEADER_LENGTH_HEADER} header", document)
    assert_invalid("request body is not valid JSON", body)


@pytest.mark.parametrize("size", [-1, 2.5, True, "24"])
def test_binary_size_must_be_a_non_negative_integer(size):
    document = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": size}}]
    }
    body, length = binary_body(document, FP32_X)
    assert_invalid("input 'x': binary_data_size must be a non-negative integer", body, header_length=length)


def test_binary_bool_bytes_must_be_zero_or_one():
    sig = signature(("b", "BOOL", [3]))
    body, length = binary_body({"inputs": [tensor("b", "BOOL", [3], size=3)]}, b"\x01\x02\x00")
    assert_invalid("input 'b': BOOL binary data has a byte other than 0 or 1", body, sig, length)


SIG_S = signature(("s", "BYTES", [2]))


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (struct.pack("<I", 1) + b"a", "input 's': shape [2] needs 2 BYTES elements, binary data has 1"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) * 2, "binary data holds more than the 2 BYTES elements"),
        (struct.pack("<I", 1) + b"a" + b"\x00\x00", "input 's': BYTES element 1 has a truncated length prefix"),
        (
            struct.pack("<I", 1) + b"a" + struct.pack("<I", 5) + b"abc",
            "input 's': BYTES element 1 of 5 bytes runs past binary_data_size",
        ),
        (b"", "input 's': shape [2] needs 2 BYTES elements, binary data has 0"),
    ],
)
def test_binary_bytes_errors(raw, fragment):
    body, length = binary_body({"inputs": [tensor("s", "BYTES", [2], size=len(raw))]}, raw)
    assert_invalid(fragment, body, SIG_S, length)


def test_binary_bytes_element_cannot_run_into_the_next_tensor():
    """An element's length is bounded by its own tensor's binary_data_size, not by the body."""
    sig = signature(("s", "BYTES", [1]), ("t", "UINT8", [2]))
    raw = struct.pack("<I", 3) + b"ab"
    document = {"inputs": [tensor("s", "BYTES", [1], size=len(raw)), tensor("t", "UINT8", [2], size=2)]}
    body, length = binary_body(document, raw, b"\x01\x02")
    assert_invalid("input 's': BYTES element 0 of 3 bytes runs past binary_data_size", body, sig, length)


def test_errors_are_portal_errors_with_a_message():
    with pytest.raises(InvalidInput) as caught:
        decode(x_json([1]))
    assert caught.value.message == str(caught.value)
    assert "input 'x'" in caught.value.message
