"""Shared values and body builders of the protocol codec tests."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from inference.protocol import (
    HEADER_LENGTH_HEADER,
    InferenceRequest,
    decode_request,
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
