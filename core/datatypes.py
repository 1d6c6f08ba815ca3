"""Open Inference Protocol v2 datatypes and their torch / numpy counterparts."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# BYTES has no tensor counterpart; it is handled as lists of strings where supported.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPES: tuple[str, ...] = (*TORCH_DTYPES, "BYTES")
_BY_TORCH = {dtype: name for name, dtype in TORCH_DTYPES.items()}
_BY_NUMPY = {dtype: name for name, dtype in NUMPY_DTYPES.items()}


def datatype_of_tensor(tensor: torch.Tensor) -> str:
    """The OIP datatype name of a tensor; ValueError for dtypes the protocol lacks."""
    try:
        return _BY_TORCH[tensor.dtype]
    except KeyError:
        raise ValueError(f"tensor dtype {tensor.dtype} has no Open Inference Protocol datatype") from None


def datatype_of_array(array: np.ndarray) -> str:
    """The OIP datatype name of a numpy array; ValueError for dtypes the protocol lacks."""
    try:
        return _BY_NUMPY[array.dtype]
    except KeyError:
        raise ValueError(f"array dtype {array.dtype} has no Open Inference Protocol datatype") from None


def is_floating(datatype: str) -> bool:
    return datatype in {"FP16", "FP32", "FP64"}


def example_array(tensor: dict[str, Any]) -> np.ndarray:
    """One tensor of a version's stored example ({name, datatype, shape, data}) as an array of its shape."""
    return np.asarray(tensor["data"], dtype=NUMPY_DTYPES[tensor["datatype"]]).reshape(tensor["shape"])
