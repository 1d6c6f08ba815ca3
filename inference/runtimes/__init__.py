"""Model formats: one module each, registered here by format name."""

from __future__ import annotations

from inference.runtimes.base import (
    ModelLoadError,
    ModelRuntime,
    TextInputError,
    TextRuntime,
    flatten_outputs,
    texts_of,
)
from inference.runtimes.exported_program import ExportedProgramRuntime
from inference.runtimes.huggingface import HuggingFaceRuntime, hf_libraries, token_rows_trim
from inference.runtimes.onnx import OnnxRuntime
from inference.runtimes.torchscript import TorchScriptRuntime

RUNTIMES: dict[str, type[ModelRuntime]] = {
    runtime.format: runtime for runtime in (TorchScriptRuntime, ExportedProgramRuntime, HuggingFaceRuntime, OnnxRuntime)
}


def runtime_for(format_name: str) -> type[ModelRuntime]:
    """The runtime class for a format; KeyError names the known formats."""
    try:
        return RUNTIMES[format_name]
    except KeyError:
        raise KeyError(f"unknown model format {format_name!r}; known: {', '.join(RUNTIMES)}") from None


__all__ = [
    "RUNTIMES",
    "ModelLoadError",
    "ModelRuntime",
    "TextInputError",
    "TextRuntime",
    "flatten_outputs",
    "hf_libraries",
    "runtime_for",
    "texts_of",
    "token_rows_trim",
]
