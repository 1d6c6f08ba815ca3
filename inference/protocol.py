"""Open Inference Protocol v2 REST codec, with Triton's binary tensor data extension.

Pure functions: `decode_request` turns an HTTP body (plus the `Inference-Header-Content-Length`
header) into checked numpy arrays for a model signature; `encode_response` builds the body and
headers of the answer; `error_body` the JSON of a failure. Every problem in a request raises
`InvalidInput` (400) or `PayloadTooLarge` (413) with a message that names the tensor.

Binary layout (Triton `extension_binary_data.md`): the body is the JSON object followed by the raw
tensors in the order of the JSON's inputs (outputs in a response), little-endian, row-major, no
padding; BOOL is one byte (0 or 1); a BYTES element is a 4-byte little-endian length and its bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from core.datatypes import DATATYPES, NUMPY_DTYPES
from core.errors import InvalidInput, PayloadTooLarge
from core.jsondepth import nested_deeper_than

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

_LITTLE_ENDIAN: dict[str, np.dtype] = {name: dtype.newbyteorder("<") for name, dtype in NUMPY_DTYPES.items()}
_BYTES_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class InferenceRequest:
    """A decoded, signature-checked inference request.

    `inputs` follows the signature's input order. `requested_outputs` is None when the request
    names no outputs (answer with all of them); otherwise `(name, binary)` pairs in request order,
    where `binary` already folds in the request-level `binary_data_output` default.
    """

    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]
    requested_outputs: list[tuple[str, bool]] | None
    binary_output_default: bool

    def binary_output_names(self, output_names: Iterable[str]) -> set[str]:
        """Which of the outputs being returned go back as binary data."""
        if self.requested_outputs is None:
            return set(output_names) if self.binary_output_default else set()
        flags = dict(self.requested_outputs)
        return {name for name in output_names if flags.get(name, False)}


@dataclass(frozen=True)
class _InputHeader:
    """The JSON part of one request input, checked for form but not yet against the signature."""

    name: str
    datatype: str
    shape: list[int]
    data: Any
    binary_size: int | None

    @property
    def count(self) -> int:
        return math.prod(self.shape)


# --- request ------------------------------------------------------------------------------------


def decode_request(
    body: bytes,
    header_length: int | None,
    signature: dict[str, Any],
    *,
    max_elements: int,
    max_json_depth: int = 32,
) -> InferenceRequest:
    """Decode and check an OIP v2 inference request body against a model signature.

    `header_length` is the `Inference-Header-Content-Length` header (None when absent, in which
    case the whole body is JSON and no input may be binary).
    """
    body = bytes(body)
    json_end = _json_end(body, header_length)
    raw = _load_json(body[:json_end], max_json_depth)
    request_id, parameters = _request_meta(raw)
    headers = _input_headers(raw.get("inputs"))
    _check_inputs(headers, signature, max_elements)
    binary_default = _bool_param(parameters, "binary_data_output", "request parameters")
    requested = _requested_outputs(raw.get("outputs"), signature, binary_default)
    # Tensor data is read last, once everything cheap to check has passed.
    arrays = _decode_inputs(headers, body, json_end, header_length is not None)
    return InferenceRequest(
        id=request_id,
        parameters=parameters,
        inputs={spec["name"]: arrays[spec["name"]] for spec in signature["inputs"]},
        requested_outputs=requested,
        binary_output_default=binary_default,
    )


def _json_end(body: bytes, header_length: int | None) -> int:
    """Where the JSON part of the body stops."""
    if header_length is None:
        return len(body)
    if isinstance(header_length, bool) or not isinstance(header_length, int) or header_length < 0:
        raise InvalidInput(f"{HEADER_LENGTH_HEADER} {header_length!r} is not a valid length.")
    if header_length > len(body):
        raise InvalidInput(f"{HEADER_LENGTH_HEADER} {header_length} is beyond the end of the body ({len(body)} bytes).")
    return header_length


def _load_json(raw: bytes, max_depth: int) -> dict[str, Any]:
    """Parse the JSON header; NaN and Infinity tokens are accepted as Triton clients send them."""
    try:
        # orjson parses float arrays several times faster; it refuses the NaN/Infinity
        # tokens (and nesting past 1024 levels), which the standard parser then handles.
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(raw)
        except RecursionError:
            raise InvalidInput(f"request JSON is nested deeper than {max_depth} levels.") from None
        except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if nested_deeper_than(raw, max_depth):
        raise InvalidInput(f"request JSON is nested deeper than {max_depth} levels.")
    if not isinstance(value, dict):
        raise InvalidInput("request JSON must be an object with an 'inputs' list.")
    return value


def _request_meta(raw: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The request's id and top-level parameters."""
    request_id = raw.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("request 'id' must be a string.")
    parameters = raw.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("request 'parameters' must be an object.")
    return request_id, parameters


def _bool_param(parameters: dict[str, Any], key: str, where: str) -> bool:
    """An optional boolean parameter, False when absent."""
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}: '{key}' must be true or false.")
    return value


def _input_headers(raw: Any) -> list[_InputHeader]:
    """The request's inputs, each checked for form."""
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("request JSON needs a non-empty 'inputs' list.")
    return [_input_header(item, index) for index, item in enumerate(raw)]


def _input_header(raw: Any, index: int) -> _InputHeader:
    """One input's name, datatype, shape and where its data lies."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidInput(f"inputs[{index}] must be an object with a string 'name'.")
    name = raw["name"]
    datatype, shape = raw.get("datatype"), raw.get("shape")
    if datatype not in DATATYPES:
        raise InvalidInput(f"input '{name}': datatype {datatype!r} is not one of {', '.join(DATATYPES)}.")
    if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise InvalidInput(f"input '{name}': shape must be a list of non-negative integers, got {shape!r}.")
    parameters = raw.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"input '{name}': 'parameters' must be an object.")
    binary_size = parameters.get("binary_data_size")
    if binary_size is not None and (type(binary_size) is not int or binary_size < 0):
        raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer.")
    has_data = "data" in raw
    if has_data and binary_size is not None:
        raise InvalidInput(f"input '{name}' has both 'data' and binary_data_size; give one.")
    if not has_data and binary_size is None:
        raise InvalidInput(f"input '{name}' has neither 'data' nor binary_data_size.")
    return _InputHeader(name, datatype, shape, raw.get("data"), binary_size)


def _check_inputs(headers: list[_InputHeader], signature: dict[str, Any], max_elements: int) -> None:
    """Inputs match the declared ones by name, datatype and shape, and fit the element limit."""
    declared = {spec["name"]: spec for spec in signature["inputs"]}
    seen: set[str] = set()
    total = 0
    for header in headers:
        spec = declared.get(header.name)
        if spec is None:
            raise InvalidInput(f"unknown input '{header.name}'; the model takes {', '.join(declared)}.")
        if header.name in seen:
            raise InvalidInput(f"input '{header.name}' appears more than once.")
        seen.add(header.name)
        if header.datatype != spec["datatype"]:
            raise InvalidInput(f"input '{header.name}' is {header.datatype}, the model takes {spec['datatype']}.")
        if not _shape_fits(header.shape, spec["shape"]):
            raise InvalidInput(f"input '{header.name}' has shape {header.shape}, the model takes {spec['shape']}.")
        total += header.count
        if total > max_elements:
            raise PayloadTooLarge(
                f"input '{header.name}' brings the request to {total} elements, over the limit of {max_elements}."
            )
    missing = [name for name in declared if name not in seen]
    if missing:
        raise InvalidInput(f"input '{missing[0]}' is missing; the model takes {', '.join(declared)}.")


def _shape_fits(shape: list[int], declared: list[int]) -> bool:
    """True when a concrete shape matches a declared one (-1 matches any size)."""
    return len(shape) == len(declared) and all(d in (-1, s) for s, d in zip(shape, declared, strict=True))


def _decode_inputs(headers: list[_InputHeader], body: bytes, offset: int, has_header: bool) -> dict[str, np.ndarray]:
    """Arrays by input name; binary inputs consume the body after the JSON in request order."""
    arrays = {}
    for header in headers:
        if header.binary_size is None:
            arrays[header.name] = _decode_json_data(header)
            continue
        if not has_header:
            raise InvalidInput(
                f"input '{header.name}' has binary_data_size but the request has no {HEADER_LENGTH_HEADER} header."
            )
        arrays[header.name] = _decode_binary(header, body, offset)
        offset += header.binary_size
    if offset != len(body):
        raise InvalidInput(f"request body has {len(body) - offset} bytes after the binary data of its inputs.")
    return arrays


# --- JSON tensor data ---------------------------------------------------------------------------


def _decode_json_data(header: _InputHeader) -> np.ndarray:
    """An input's `data` list (flat, or nested as its shape) as an array of that shape."""
    flat = _flatten(header)
    if header.datatype == "BYTES":
        array = _json_bytes(header, flat)
    elif header.datatype == "BOOL":
        array = _json_bool(header, flat)
    elif header.datatype.startswith(("INT", "UINT")):
        array = _json_int(header, flat)
    else:
        array = _json_float(header, flat)
    return array.reshape(header.shape)


def _flatten(header: _InputHeader) -> list[Any]:
    """The data's elements in row-major order; nested lists must follow the shape exactly."""
    data = header.data
    if not isinstance(data, list):
        raise InvalidInput(f"input '{header.name}': 'data' must be a list.")
    if not data or not isinstance(data[0], list):
        if len(data) != header.count:
            raise InvalidInput(
                f"input '{header.name}': shape {header.shape} needs {header.count} values, data has {len(data)}."
            )
        return data
    level = [data]
    for depth, size in enumerate(header.shape):
        # One step per row, not per element: extend() copies each row's items in C.
        flat: list[Any] = []
        for row in level:
            if not isinstance(row, list) or len(row) != size:
                found = f"{len(row)} items" if isinstance(row, list) else "a value"
                raise InvalidInput(
                    f"input '{header.name}': nested data does not match shape {header.shape} "
                    f"(depth {depth} has {found} where {size} are needed)."
                )
            flat.extend(row)
        level = flat
    return level


def _element_types(header: _InputHeader, flat: list[Any], allowed: set[type], kind: str) -> None:
    """Every element is of an allowed Python type (bool is not taken for a number)."""
    wrong = set(map(type, flat)) - allowed
    if wrong:
        found = ", ".join(sorted(_json_type_name(t) for t in wrong))
        raise InvalidInput(f"input '{header.name}': {header.datatype} data must be {kind}, found {found}.")


def _json_type_name(kind: type) -> str:
    """JSON's name for a parsed value's Python type."""
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(
        kind, "null" if kind is type(None) else kind.__name__
    )


def _json_bytes(header: _InputHeader, flat: list[Any]) -> np.ndarray:
    """BYTES data: JSON strings, kept as UTF-8 bytes in an object array."""
    _element_types(header, flat, {str}, "strings")
    try:
        return np.fromiter((item.encode() for item in flat), dtype=object, count=len(flat))
    except UnicodeEncodeError as exc:
        # JSON's \ud800-style escapes can spell a lone surrogate, which no UTF-8 text holds.
        raise InvalidInput(f"input '{header.name}': a string holds {exc.object[exc.start]!r}, not valid text "
                           "(a lone surrogate).") from None  # fmt: skip


def _json_bool(header: _InputHeader, flat: list[Any]) -> np.ndarray:
    """BOOL data: JSON true/false only."""
    _element_types(header, flat, {bool}, "true or false")
    return np.asarray(flat, dtype=np.bool_)


def _json_int(header: _InputHeader, flat: list[Any]) -> np.ndarray:
    """Integer data: JSON integers within the datatype's range."""
    _element_types(header, flat, {int}, "integers")
    dtype = NUMPY_DTYPES[header.datatype]
    if flat:
        info = np.iinfo(dtype)
        low, high = min(flat), max(flat)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidInput(f"input '{header.name}': value {bad} is out of range for {header.datatype}.")
    return np.asarray(flat, dtype=dtype)


def _json_float(header: _InputHeader, flat: list[Any]) -> np.ndarray:
    """Floating-point data: JSON numbers (NaN and Infinity pass through); finite overflow is refused."""
    _element_types(header, flat, {int, float}, "numbers")
    try:
        wide = np.asarray(flat, dtype=np.float64)
        with np.errstate(over="raise"):
            return wide.astype(NUMPY_DTYPES[header.datatype], copy=False)
    except (OverflowError, FloatingPointError):
        raise InvalidInput(f"input '{header.name}': a value is out of range for {header.datatype}.") from None


# --- binary tensor data -------------------------------------------------------------------------


def _decode_binary(header: _InputHeader, body: bytes, offset: int) -> np.ndarray:
    """An input's `binary_data_size` bytes starting at `offset`, as an array of its shape."""
    size = header.binary_size or 0
    if offset + size > len(body):
        raise InvalidInput(
            f"input '{header.name}': binary_data_size {size} runs past the end of the body "
            f"({len(body) - offset} bytes left)."
        )
    if header.datatype == "BYTES":
        return _binary_bytes(header, body[offset : offset + size]).reshape(header.shape)
    dtype = _LITTLE_ENDIAN[header.datatype]
    expected = header.count * dtype.itemsize
    if size != expected:
        raise InvalidInput(
            f"input '{header.name}': binary_data_size {size} does not match shape {header.shape} "
            f"of {header.datatype} ({expected} bytes)."
        )
    if header.datatype == "BOOL":
        raw = np.frombuffer(body, dtype=np.uint8, count=header.count, offset=offset)
        if raw.size and raw.max() > 1:
            raise InvalidInput(f"input '{header.name}': BOOL binary data has a byte other than 0 or 1.")
    raw = np.frombuffer(body, dtype=dtype, count=header.count, offset=offset)
    # astype copies into an aligned, writable, native-order array (torch.from_numpy wants that).
    return raw.astype(NUMPY_DTYPES[header.datatype]).reshape(header.shape)


def _binary_bytes(header: _InputHeader, chunk: bytes) -> np.ndarray:
    """BYTES binary data: each element a 4-byte little-endian length and that many bytes."""
    items: list[bytes] = []
    position = 0
    while position < len(chunk):
        if len(items) == header.count:
            raise InvalidInput(
                f"input '{header.name}': binary data holds more than the {header.count} BYTES elements "
                f"of shape {header.shape}."
            )
        if position + 4 > len(chunk):
            raise InvalidInput(f"input '{header.name}': BYTES element {len(items)} has a truncated length prefix.")
        (length,) = _BYTES_LENGTH.unpack_from(chunk, position)
        position += 4
        if position + length > len(chunk):
            raise InvalidInput(
                f"input '{header.name}': BYTES element {len(items)} of {length} bytes runs past binary_data_size."
            )
        items.append(chunk[position : position + length])
        position += length
    if len(items) != header.count:
        raise InvalidInput(
            f"input '{header.name}': shape {header.shape} needs {header.count} BYTES elements, "
            f"binary data has {len(items)}."
        )
    return np.fromiter(items, dtype=object, count=len(items))


# --- requested outputs --------------------------------------------------------------------------


def _requested_outputs(raw: Any, signature: dict[str, Any], default: bool) -> list[tuple[str, bool]] | None:
    """`(name, binary)` for each requested output, or None when the request names none."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput("request 'outputs' must be a list.")
    if not raw:
        return None  # an empty list asks for nothing in particular: answer with every output
    declared = [spec["name"] for spec in signature.get("outputs") or []]
    requested: list[tuple[str, bool]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a string 'name'.")
        name = item["name"]
        if declared and name not in declared:
            raise InvalidInput(
                f"requested output '{name}' is not an output of the model; it has {', '.join(declared)}."
            )
        if any(name == seen for seen, _ in requested):
            raise InvalidInput(f"output '{name}' is requested more than once.")
        parameters = item.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidInput(f"output '{name}': 'parameters' must be an object.")
        # A per-output binary_data overrides the request-wide binary_data_output.
        binary = _bool_param(parameters, "binary_data", f"output '{name}'") if "binary_data" in parameters else default
        requested.append((name, binary))
    return requested


# --- response -----------------------------------------------------------------------------------


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, str, np.ndarray]],
    binary: set[str],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an inference response; outputs named in `binary` go after the JSON as raw bytes."""
    document: dict[str, Any] = {"model_name": model_name}
    if model_version:
        document["model_version"] = model_version
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = parameters
    entries, chunks = [], []
    finite = True
    for name, datatype, array in outputs:
        array = np.asarray(array)
        entry, chunk = _encode_output(name, datatype, array, name in binary)
        entries.append(entry)
        if chunk is not None:
            chunks.append(chunk)
        elif array.dtype.kind in "fc" and array.size and not np.isfinite(array).all():
            finite = False
    document["outputs"] = entries
    # orjson is ~20x faster but writes NaN and Infinity as null; the standard encoder keeps
    # the tokens Triton's clients read, so it takes the (rare) answers that hold them.
    header = orjson.dumps(document) if finite else json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER: str(len(header))}
    return b"".join([header, *chunks]), headers


def _encode_output(name: str, datatype: str, array: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    """One output's JSON entry, and its raw bytes when sent as binary."""
    if datatype not in DATATYPES:
        raise ValueError(f"output '{name}': datatype {datatype!r} is not an Open Inference Protocol datatype")
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        chunk = _bytes_to_binary(array) if datatype == "BYTES" else _numeric_to_binary(array, datatype)
        entry["parameters"] = {"binary_data_size": len(chunk)}
        return entry, chunk
    if datatype == "BYTES":
        entry["data"] = [_as_text(name, item) for item in array.reshape(-1).tolist()]
    else:
        entry["data"] = np.asarray(array, dtype=NUMPY_DTYPES[datatype]).reshape(-1).tolist()
    return entry, None


def _numeric_to_binary(array: np.ndarray, datatype: str) -> bytes:
    """Little-endian row-major bytes of a numeric array."""
    return np.ascontiguousarray(array, dtype=_LITTLE_ENDIAN[datatype]).tobytes()


def _bytes_to_binary(array: np.ndarray) -> bytes:
    """Length-prefixed elements of a BYTES array, row-major."""
    parts = []
    for item in array.reshape(-1).tolist():
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts += [_BYTES_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def _as_text(name: str, item: Any) -> str:
    """A BYTES element for JSON, which can only carry text."""
    if isinstance(item, str):
        return item
    try:
        return bytes(item).decode()
    except UnicodeDecodeError:
        raise ValueError(f"output '{name}': BYTES element is not UTF-8; return it as binary data") from None


def error_body(message: str) -> bytes:
    """The JSON body of a failed request: `{"error": message}`."""
    return json.dumps({"error": message}).encode()


# --- the same checks for another transport (gRPC) -----------------------------------------------


def tensors_decode(
    entries: list[dict[str, Any]], blobs: list[bytes | None], signature: dict[str, Any], *, max_elements: int
) -> dict[str, np.ndarray]:
    """Inputs that another transport carried, checked and decoded as `decode_request` does.

    `entries` are the inputs' headers in this module's JSON form (name, datatype, shape, and
    `data` or `parameters.binary_data_size`); `blobs[i]` is input i's raw data (the binary
    layout above), or None when its values are in `data`. Returns arrays in the signature's order.
    """
    headers = [_input_header(entry, index) for index, entry in enumerate(entries)]
    _check_inputs(headers, signature, max_elements)
    arrays = {
        header.name: _decode_json_data(header) if blob is None else _decode_binary(header, blob, 0)
        for header, blob in zip(headers, blobs, strict=True)
    }
    return {spec["name"]: arrays[spec["name"]] for spec in signature["inputs"]}


def outputs_requested(names: list[str], signature: dict[str, Any]) -> list[str] | None:
    """Requested output names checked against the signature (None when none are named: all of them)."""
    requested = _requested_outputs([{"name": name} for name in names], signature, True)
    return None if requested is None else [name for name, _ in requested]


def tensor_bytes(array: np.ndarray, datatype: str) -> bytes:
    """An output's raw data in the binary layout above (little-endian; BYTES length-prefixed)."""
    if datatype not in DATATYPES:
        raise ValueError(f"datatype {datatype!r} is not an Open Inference Protocol datatype")
    return _bytes_to_binary(array) if datatype == "BYTES" else _numeric_to_binary(array, datatype)
