"""Input/output signatures: parsing, checking and inference from an example input.

A signature is `{"inputs": [tensor], "outputs": [tensor]}` where a tensor is
`{"name": str, "datatype": OIP datatype, "shape": [int, ...]}` and -1 marks a dimension
of variable size (the batch dimension is the first one).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from core.datatypes import DATATYPES, NUMPY_DTYPES
from core.errors import InvalidInput

TENSOR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,63}$")
MAX_TENSORS = 64
MAX_RANK = 8
# An example input is stored with the version and run at validation: keep it small.
MAX_EXAMPLE_ELEMENTS = 1_000_000
MAX_EXAMPLE_TEXTS = 64
MAX_EXAMPLE_TEXT_CHARS = 10_000


def _parse_tensor_spec(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be an object with name, datatype and shape.", field="signature")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not TENSOR_NAME_RE.match(name):
        raise InvalidInput(f"{where}.name {name!r} is not a valid tensor name.", field="signature")
    if datatype not in DATATYPES:
        raise InvalidInput(
            f"{where} ({name}): datatype {datatype!r} is not one of {', '.join(DATATYPES)}.", field="signature"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d >= 0) for d in shape)
    ):
        raise InvalidInput(
            f"{where} ({name}): shape must be a list of at most {MAX_RANK} sizes, each >= 0 or -1 for variable.",
            field="signature",
        )
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def _parse_tensor_list(raw: Any, key: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput(f"signature.{key} must be a list.", field="signature")
    if len(raw) > MAX_TENSORS:
        raise InvalidInput(f"signature.{key} has more than {MAX_TENSORS} tensors.", field="signature")
    specs = [_parse_tensor_spec(item, f"signature.{key}[{i}]") for i, item in enumerate(raw)]
    names = [spec["name"] for spec in specs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"signature.{key} repeats a tensor name.", field="signature")
    return specs


def signature_parse(raw: Any) -> dict[str, list[dict[str, Any]]]:
    """A checked signature from user JSON; `outputs` may be empty (validation fills it)."""
    if not isinstance(raw, dict):
        raise InvalidInput("signature must be an object with 'inputs' and optional 'outputs'.", field="signature")
    unknown = set(raw) - {"inputs", "outputs"}
    if unknown:
        raise InvalidInput(f"signature has unknown key(s): {', '.join(sorted(unknown))}.", field="signature")
    inputs = _parse_tensor_list(raw.get("inputs"), "inputs")
    if not inputs:
        raise InvalidInput("signature.inputs must list at least one input tensor.", field="signature")
    return {"inputs": inputs, "outputs": _parse_tensor_list(raw.get("outputs"), "outputs")}


def example_parse(raw: Any) -> list[dict[str, Any]]:
    """Example inputs in Open Inference Protocol form, checked and normalised.

    Accepts `{"inputs": [{"name", "datatype", "shape"?, "data"}]}`; `shape` may be left out
    when `data` is nested, and `datatype` defaults to FP32 for floats and INT64 for ints.
    A BYTES input (text, for Hugging Face models; the datatype is implied by string data)
    holds a flat list of non-empty strings, kept as strings.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("inputs"), list) or not raw["inputs"]:
        raise InvalidInput(
            'example_input must look like {"inputs": [{"name": "x", "datatype": "FP32", "data": [[...]]}]}.',
            field="example_input",
        )
    tensors = []
    for i, item in enumerate(raw["inputs"]):
        where = f"example_input.inputs[{i}]"
        if not isinstance(item, dict) or "data" not in item:
            raise InvalidInput(f"{where} needs 'name' and 'data'.", field="example_input")
        name = item.get("name")
        if not isinstance(name, str) or not TENSOR_NAME_RE.match(name):
            raise InvalidInput(f"{where}.name {name!r} is not a valid tensor name.", field="example_input")
        if _is_text_example(item):
            tensors.append(_text_example_parse(item, where, name))
            continue
        try:
            array = np.asarray(item["data"])
        except ValueError as exc:
            raise InvalidInput(
                f"{where} ({name}): data is ragged or not numeric: {exc}", field="example_input"
            ) from None
        if array.dtype.kind not in "biuf":
            raise InvalidInput(f"{where} ({name}): data must be numbers or booleans.", field="example_input")
        if array.size > MAX_EXAMPLE_ELEMENTS:
            raise InvalidInput(f"{where} ({name}): more than {MAX_EXAMPLE_ELEMENTS} elements.", field="example_input")
        datatype = item.get("datatype") or {"b": "BOOL", "i": "INT64", "u": "INT64", "f": "FP32"}[array.dtype.kind]
        if datatype not in NUMPY_DTYPES:
            raise InvalidInput(f"{where} ({name}): datatype {datatype!r} is not numeric.", field="example_input")
        shape = item.get("shape")
        if shape is not None:
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise InvalidInput(f"{where} ({name}): shape must be a list of sizes.", field="example_input")
            if int(np.prod(shape)) != array.size:
                raise InvalidInput(
                    f"{where} ({name}): shape {shape} needs {int(np.prod(shape))} values, data has {array.size}.",
                    field="example_input",
                )
            array = array.reshape(shape)
        tensors.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "data": array.astype(NUMPY_DTYPES[datatype]).tolist(),
            }
        )
    return tensors


def _is_text_example(item: dict[str, Any]) -> bool:
    data = item["data"]
    strings = isinstance(data, str) or (isinstance(data, list) and bool(data) and isinstance(data[0], str))
    return item.get("datatype") == "BYTES" or ("datatype" not in item and strings)


def _text_example_parse(item: dict[str, Any], where: str, name: str) -> dict[str, Any]:
    """A BYTES example: UTF-8 text only (never numbers or base64 blobs), a few short strings."""
    data = item["data"]
    texts = [data] if isinstance(data, str) else data
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise InvalidInput(
            f'{where} ({name}): BYTES data must be a string or a flat list of strings, e.g. ["a sentence"].',
            field="example_input",
        )
    if len(texts) > MAX_EXAMPLE_TEXTS:
        raise InvalidInput(f"{where} ({name}): more than {MAX_EXAMPLE_TEXTS} texts.", field="example_input")
    for text in texts:
        if not text.strip():
            raise InvalidInput(f"{where} ({name}): an example text is empty.", field="example_input")
        if len(text) > MAX_EXAMPLE_TEXT_CHARS:
            raise InvalidInput(
                f"{where} ({name}): an example text is longer than {MAX_EXAMPLE_TEXT_CHARS} characters.",
                field="example_input",
            )
    shape = item.get("shape")
    if shape is not None and shape != [len(texts)]:
        raise InvalidInput(
            f"{where} ({name}): shape {shape} does not match {len(texts)} text(s); use [{len(texts)}] or leave it out.",
            field="example_input",
        )
    return {"name": name, "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}


def signature_from_example(example: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Input signature inferred from example tensors: the first dimension becomes -1 (batch)."""
    inputs = []
    for tensor in example:
        shape = list(tensor["shape"])
        if shape:
            shape[0] = -1
        inputs.append({"name": tensor["name"], "datatype": tensor["datatype"], "shape": shape})
    return {"inputs": inputs, "outputs": []}


def example_matches_signature(example: list[dict[str, Any]], signature: dict[str, Any]) -> None:
    """Raise InvalidInput unless the example fits the declared inputs by name, type and shape."""
    declared = {spec["name"]: spec for spec in signature["inputs"]}
    given = {tensor["name"] for tensor in example}
    if given != set(declared):
        raise InvalidInput(
            f"example_input names {sorted(given)} differ from the signature's inputs {sorted(declared)}.",
            field="example_input",
        )
    for tensor in example:
        spec = declared[tensor["name"]]
        if tensor["datatype"] != spec["datatype"]:
            raise InvalidInput(
                f"example input {tensor['name']} is {tensor['datatype']}, the signature says {spec['datatype']}.",
                field="example_input",
            )
        if not shape_fits(tensor["shape"], spec["shape"]):
            raise InvalidInput(
                f"example input {tensor['name']} has shape {tensor['shape']}, the signature says {spec['shape']}.",
                field="example_input",
            )


def shape_fits(shape: list[int], declared: list[int]) -> bool:
    """True when a concrete shape matches a declared one (-1 matches any size)."""
    return len(shape) == len(declared) and all(d == -1 or d == s for s, d in zip(shape, declared, strict=True))


def labels_parse(raw: Any) -> list[str]:
    """Class names: a list of distinct non-empty strings (or a newline/comma separated string)."""
    if raw in (None, "", []):
        return []
    if isinstance(raw, str):
        raw = [part.strip() for part in re.split(r"[\n,]", raw) if part.strip()]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x.strip() for x in raw):
        raise InvalidInput("labels must be a list of non-empty strings.", field="labels")
    if len(set(raw)) != len(raw):
        raise InvalidInput("labels must be distinct.", field="labels")
    return [x.strip() for x in raw]
