"""Open Inference Protocol v2 codec: every malformed request is a clear 4xx."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import pytest

from core.errors import InvalidInput, PayloadTooLarge
from inference.protocol import (
    HEADER_LENGTH_HEADER,
)
from tests.inference.protocol_cases import (
    SIG_X,
    binary_body,
    decode,
    json_body,
    signature,
    tensor,
    x_json,
)

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
