"""ONNX models (.onnx, or an unpacked archive holding one .onnx and its external data), run by ONNX Runtime."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from inference.runtimes.base import ModelLoadError, ModelRuntime, first_line
from registry.onnx_graph import NotOnnx, OnnxGraph, onnx_read_stream

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# ONNX Runtime names the newest opset it supports in its refusal ("... is till opset 26.").
_SUPPORTED_OPSET = re.compile(r"support for domain (\S+) is till opset (\d+)")
_UNDER_DEVELOPMENT = re.compile(r"Opset (\d+) is under development")
# Warnings only from here on: in a model host, ORT's GPU discovery cannot list /sys/bus/pci (the
# sandbox does not open it; the providers never need it) and would log that at every session.
onnxruntime.set_default_logger_severity(3)


def graph_file(path: Path) -> Path:
    """The .onnx file of an artifact: the file itself, or the one .onnx of an unpacked archive."""
    if not path.is_dir():
        return path
    found = sorted(candidate for candidate in path.rglob("*") if candidate.suffix.lower() == ".onnx")
    if len(found) != 1:
        raise ModelLoadError(f"the ONNX archive holds {len(found)} .onnx files; it must hold exactly one")
    return found[0]


def providers_for(device: torch.device) -> list[str]:
    """CUDA first when the device is a GPU and the installed onnxruntime offers it; CPU always."""
    if device.type == "cuda" and CUDA in onnxruntime.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def session_options() -> onnxruntime.SessionOptions:
    """One session's threads follow the worker's torch threads (OMP_NUM_THREADS), like the torch runtimes."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(torch.get_num_threads(), 1)
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads burn a core between requests that the serving loop or another model needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def load_error_message(exc: BaseException, graph: OnnxGraph) -> str:
    """ONNX Runtime's refusal in a sentence an uploader can act on (opsets and IR versions named)."""
    text = str(exc)
    supported = _SUPPORTED_OPSET.search(text)
    wanted = _UNDER_DEVELOPMENT.search(text)
    if supported or wanted:
        newest = f" (it supports up to opset {supported.group(2)})" if supported else ""
        opset = wanted.group(1) if wanted else str(graph.opset)
        return (
            f"the model imports opset {opset} of the ai.onnx domain, newer than onnxruntime "
            f"{onnxruntime.__version__} on this worker supports{newest}; export it again with an older "
            "opset (torch.onnx.export(..., opset_version=...))"
        )
    detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text.strip()).splitlines()[0][:500]
    # Drop the C++ source location and signature that precede ORT's own sentence.
    detail = re.sub(r"^/\S+:\d+ .*?\) ", "", detail)
    return f"onnxruntime {onnxruntime.__version__} could not load the model: {detail}"


class OnnxRuntime(ModelRuntime):
    format = "onnx"

    def __init__(self, session: onnxruntime.InferenceSession, device: torch.device, graph: OnnxGraph) -> None:
        provider = session.get_providers()[0]
        # Where it really runs: a GPU worker whose onnxruntime has no CUDA provider computes on the CPU.
        super().__init__(session, device if provider == CUDA else torch.device("cpu"))
        self.session = session
        self.graph = graph
        self.provider = provider
        self.input_names = [node.name for node in session.get_inputs()]
        self.output_names = [node.name for node in session.get_outputs()]

    @classmethod
    def load(cls, path: Path, device: torch.device, *, task: str = "") -> OnnxRuntime:
        model_file = graph_file(path)
        try:
            with model_file.open("rb") as stream:
                graph = onnx_read_stream(stream)
        except NotOnnx as exc:
            raise ModelLoadError(f"the file is not an ONNX model: {exc}") from exc
        except OSError as exc:
            raise ModelLoadError(f"the ONNX model could not be read: {first_line(exc)}") from exc
        try:
            # A path, not bytes: external data is found beside the .onnx file.
            providers: list[Any] = providers_for(device)
            if providers[0] == CUDA:
                providers[0] = (CUDA, {"device_id": device.index or 0})
            session = onnxruntime.InferenceSession(str(model_file), sess_options=session_options(), providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail, InvalidGraph, NotImplemented…
            raise ModelLoadError(load_error_message(exc, graph)) from exc
        return cls(session, device, graph)

    def parameter_count(self) -> int:
        return self.graph.parameter_count

    def memory_bytes(self) -> int:
        return self.graph.weight_bytes

    def predict(self, inputs: Sequence[torch.Tensor]) -> list[tuple[str | None, torch.Tensor]]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the model takes {len(self.input_names)} input(s), {len(inputs)} were given")
        feeds = {name: _numpy(tensor) for name, tensor in zip(self.input_names, inputs, strict=True)}
        results = self.session.run(self.output_names, feeds)
        return [(name, _tensor(array)) for name, array in zip(self.output_names, results, strict=True)]

    def describe(self) -> dict[str, Any]:
        """The provider in use, the versions and what the graph says of itself."""
        return {
            "runtime": "onnxruntime",
            "onnxruntime_version": onnxruntime.__version__,
            "provider": self.provider,
            "providers_available": onnxruntime.get_available_providers(),
            "onnx": self.graph.describe(),
            "memory_bytes": self.memory_bytes(),
        }


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu").numpy())


def _tensor(array: np.ndarray) -> torch.Tensor:
    # ORT hands 64-bit integers back as numpy's (u)longlong, which torch.from_numpy refuses: the
    # same bytes viewed as the canonical dtype of that size.
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array.view(np.dtype(array.dtype.str)))
