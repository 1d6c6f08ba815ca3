"""Model formats: one module each, registered here by format name."""

from __future__ import annotations

from inference.runtimes.base import ModelLoadError, ModelRuntime, flatten_outputs
from inference.runtimes.exported_program import ExportedProgramRuntime
from inference.runtimes.torchscript import TorchScriptRuntime

RUNTIMES: dict[str, type[ModelRuntime]] = {
    runtime.format: runtime for runtime in (TorchScriptRuntime, ExportedProgramRuntime)
}


def runtime_for(format_name: str) -> type[ModelRuntime]:
    """The runtime class for a format; KeyError names the known formats."""
    try:
        return RUNTIMES[format_name]
    except KeyError:
        raise KeyError(f"unknown model format {format_name!r}; known: {', '.join(RUNTIMES)}") from None


__all__ = ["RUNTIMES", "ModelLoadError", "ModelRuntime", "flatten_outputs", "runtime_for"]
