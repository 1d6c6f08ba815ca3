"""gRPC messages to the prediction path's tensors and back.

An input's data comes either in `raw_input_contents` (one entry per input, in the inputs'
order, laid out as the REST binary extension's data: what tritonclient.grpc sends) or in
its typed `contents` list; both are checked against the model's signature by
inference.protocol, so a wrong shape or datatype gets the message REST gives. Outputs always
go back in `raw_output_contents`.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from core.errors import InvalidInput
from inference import protocol
from inference.grpc import predict_v2_pb2 as pb

# Which typed list of InferTensorContents holds a datatype's values (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
_LENGTH = struct.Struct("<I")


def parameters_of(parameters: Any) -> dict[str, Any]:
    """A map of InferParameter as plain values (bool, int, str, float)."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, kind) if kind else None
    return values


def inputs_of(request: pb.ModelInferRequest, signature: dict[str, Any], max_elements: int) -> dict[str, np.ndarray]:
    """The request's input tensors, checked against the signature (InvalidInput / PayloadTooLarge)."""
    raw = request.raw_input_contents
    if not request.inputs:
        raise InvalidInput("the request needs at least one input.")
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: give one per input, "
            "in the inputs' order."
        )
    entries: list[dict[str, Any]] = []
    blobs: list[bytes | None] = []
    for index, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {tensor.name!r} has both contents and raw_input_contents; give one.")
            blob: bytes | None = raw[index]
        else:
            blob = _typed_contents(tensor, entry)
        if blob is not None:
            entry["parameters"] = {"binary_data_size": len(blob)}
        entries.append(entry)
        blobs.append(blob)
    return protocol.tensors_decode(entries, blobs, signature, max_elements=max_elements)


def _typed_contents(tensor: Any, entry: dict[str, Any]) -> bytes | None:
    """Fill `entry["data"]` from the tensor's typed list; BYTES come back as raw data instead."""
    field = CONTENTS_FIELD.get(tensor.datatype)
    if tensor.datatype == "FP16":
        raise InvalidInput(f"input {tensor.name!r}: FP16 has no typed contents; send it in raw_input_contents.")
    if field is None:
        entry["data"] = []  # the datatype itself is refused, with the list of datatypes
        return None
    contents = tensor.contents
    values = getattr(contents, field)
    if not values:
        used = [name for name, _ in contents.ListFields()]
        if used:
            raise InvalidInput(f"input {tensor.name!r} is {tensor.datatype}: its values go in {field}, not {used[0]}.")
    if tensor.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(item)) + item for item in values)
    entry["data"] = list(values)
    return None


def outputs_of(request: pb.ModelInferRequest, signature: dict[str, Any]) -> list[str] | None:
    """The names of the outputs asked for, checked (None: all of them)."""
    return protocol.outputs_requested([output.name for output in request.outputs], signature)


def response_of(
    model_name: str, version: int, request_id: str, outputs: list[tuple[str, str, np.ndarray]],
    parameters: dict[str, Any],
) -> pb.ModelInferResponse:  # fmt: skip
    """The answer: outputs as raw contents, and where the time went as parameters."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=str(version), id=request_id)
    for name, datatype, array in outputs:
        array = np.asarray(array)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(protocol.tensor_bytes(array, datatype))
    for key, value in parameters.items():
        _parameter_set(response.parameters[key], value)
    return response


def _parameter_set(parameter: Any, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)


def metadata_response(metadata: dict[str, Any]) -> pb.ModelMetadataResponse:
    """ModelMetadata's answer from the gateway's metadata of a version (inference.gateway.metadata_of)."""
    response = pb.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"]
    )
    for kind in ("inputs", "outputs"):
        for spec in metadata[kind]:
            getattr(response, kind).add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
    return response
