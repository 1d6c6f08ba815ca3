"""What a sandboxed host does for a conversion: export to ONNX, quantise, time and compare, validate.

Runs only inside a task host (inference.sandbox.hosted): loading the parent and exporting it
run the uploader's code. The child is written in the host's scratch directory; its bytes go
back to the trusted parent over the channel, which stores them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import logging
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.datatypes import example_array
from inference import wire
from inference.conversions.recipes import FP16, ConversionFailed, percentiles
from inference.services import exception_summary, model_load, model_probe, random_tensor

logger = logging.getLogger(__name__)

ANSI = re.compile(r"\x1b\[[0-9;]*m")
MESSAGE_CHARS = 400
TOOLS = ("torch", "onnx", "onnxruntime", "onnxscript")


def tool_versions() -> dict[str, str]:
    """The versions of the tools a conversion uses, as recorded on the child."""
    found = {}
    for name in TOOLS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def exporter_message(exc: BaseException) -> str:
    """An exporter's error in one line: its first line, and the root cause's last (ANSI codes dropped)."""
    lines = [line.strip() for line in ANSI.sub("", str(exc)).splitlines() if line.strip()]
    head = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    if root is not exc:
        head += f" Cause: {ANSI.sub('', exception_summary(root))}"
    return head[:MESSAGE_CHARS]


def _example_arrays(signature: dict[str, Any], example: list[dict[str, Any]] | None) -> dict[str, np.ndarray]:
    """The validation example as arrays, else seeded random inputs built from the signature."""
    if example:
        by_name = {tensor["name"]: tensor for tensor in example}
        return {spec["name"]: example_array(by_name[spec["name"]]) for spec in signature["inputs"]}
    torch.manual_seed(0)
    return {spec["name"]: random_tensor(spec, 1, 8).numpy() for spec in signature["inputs"]}


class _Half(torch.nn.Module):
    """The parent in fp16 behind its own signature: floating inputs cast down, floating outputs cast up."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.inner = module.half()

    def forward(self, *inputs: torch.Tensor) -> Any:
        result = self.inner(*[x.half() if x.is_floating_point() else x for x in inputs])
        return torch.utils._pytree.tree_map(
            lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, result
        )


class Conversion:
    """One conversion in a host: the parent loaded, the child written to the scratch directory."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.path = Path(request["path"])
        self.format = str(request["format"])
        self.signature: dict[str, Any] = request["signature"]
        self.target = str(request["target"])
        self.options: dict[str, Any] = dict(request.get("options") or {})
        self.arrays = _example_arrays(self.signature, request.get("example"))
        self.input_names = [spec["name"] for spec in self.signature["inputs"]]
        self.output_names = [spec["name"] for spec in self.signature.get("outputs", [])]
        self.batched = all(spec["shape"] and spec["shape"][0] == -1 for spec in self.signature["inputs"])
        self.folder = Path(tempfile.mkdtemp(prefix="conversion-"))
        self.child = self.folder / "model.onnx"
        self.device = torch.device("cuda" if self.target == FP16 else "cpu")
        if self.target == FP16 and not torch.cuda.is_available():
            raise ConversionFailed("fp16 conversions need a GPU and this worker has none (torch.cuda is unavailable).")
        self.parent = model_load(self.path, self.format, self.device) if self.format != "onnx" else None
        self._parent_measure(int(request["repeats"]))

    # --- steps ----------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Write the child ONNX file; returns the exporter used and the file's size."""
        if self.parent is None:  # an ONNX source: its graph is the starting point
            self.child.write_bytes(self.path.read_bytes())
            return {"exporter": "none (already ONNX)", "bytes": self.child.stat().st_size}
        module = self.parent.module
        if self.target == FP16:
            module = _Half(module)
        sample = tuple(
            torch.from_numpy(np.concatenate([a, a]) if self.batched else a).to(self.device)
            for a in self.arrays.values()
        )
        opset = self.options.get("opset")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self.format == "torchscript":
                    exporter = "torch.onnx.export(dynamo=False)"
                    axes = {name: {0: "batch"} for name in [*self.input_names, *self.output_names]}
                    torch.onnx.export(
                        module,
                        sample,
                        str(self.child),
                        dynamo=False,
                        input_names=self.input_names,
                        output_names=self.output_names or None,
                        dynamic_axes=axes if self.batched else None,
                        opset_version=opset,
                    )
                else:
                    exporter = "torch.onnx.export(dynamo=True)"
                    batch = torch.export.Dim("batch")
                    shapes = tuple({0: batch} for _ in sample) if self.batched else None
                    program = torch.onnx.export(
                        module,
                        sample,
                        dynamo=True,
                        input_names=self.input_names,
                        output_names=self.output_names or None,
                        dynamic_shapes=shapes,
                        opset_version=opset,
                        optimize=True,
                        verbose=False,
                    )
                    if program is None:
                        raise ConversionFailed("torch.onnx.export returned no program")
                    program.save(str(self.child))
        except ConversionFailed:
            raise
        except Exception as exc:
            raise ConversionFailed(f"The ONNX export failed: {exporter_message(exc)}") from None
        return {"exporter": exporter, "bytes": self.child.stat().st_size}

    def quantize(self) -> dict[str, Any]:
        """Quantise the child's weights to int8 (ONNX Runtime dynamic quantisation)."""
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(str(self.child))
        # The exporter's value_info makes the quantiser's shape inference fail; it is only a hint.
        del graph.graph.value_info[:]
        stripped = self.folder / "stripped.onnx"
        onnx.save(graph, str(stripped))
        quantized = self.folder / "quantized.onnx"
        try:
            quantize_dynamic(
                str(stripped),
                str(quantized),
                weight_type=QuantType.QInt8,
                per_channel=bool(self.options.get("per_channel", False)),
            )
        except Exception as exc:
            raise ConversionFailed(f"The int8 quantisation failed: {exporter_message(exc)}") from None
        os.replace(quantized, self.child)
        stripped.unlink(missing_ok=True)
        return {"bytes": self.child.stat().st_size}

    def _parent_measure(self, repeats: int) -> None:
        """The parent's outputs on the example and its timings, taken before the export touches it
        (the TorchScript exporter and fp16's cast change the module in place)."""
        tensors = [torch.from_numpy(array) for array in self.arrays.values()]
        if self.parent is not None:
            parent = self.parent
            outputs = parent.predict(tensors)
            self.parent_out = {
                (self.output_names[k] if k < len(self.output_names) else name or f"output{k}"): tensor.cpu().numpy()
                for k, (name, tensor) in enumerate(outputs)
            }
            self.parent_ms = _timed(lambda: parent.predict(tensors), repeats)
            self.parent_memory = int(parent.memory_bytes())
            return
        source = _session(self.path, cuda=False)  # an ONNX parent runs in ONNX Runtime too
        names = [output.name for output in source.get_outputs()]
        self.parent_out = dict(zip(names, source.run(names, self.arrays), strict=True))
        self.parent_ms = _timed(lambda: source.run(names, self.arrays), repeats)
        self.parent_memory = _initializer_bytes(self.path)

    def compare(self) -> dict[str, Any]:
        """Parent and child outputs on the example, and both timed the same way (as many runs each)."""
        session = _session(self.child, cuda=self.device.type == "cuda")
        names = [output.name for output in session.get_outputs()]
        child_out = dict(zip(names, session.run(names, self.arrays), strict=True))
        child_ms = _timed(lambda: session.run(names, self.arrays), len(self.parent_ms))
        return {
            "parent": wire.tensors_pack(self.parent_out),
            "child": wire.tensors_pack(child_out),
            "latency_ms": {"parent": percentiles(self.parent_ms), "child": percentiles(child_ms)},
            "memory_bytes": {"parent": self.parent_memory, "child": _initializer_bytes(self.child)},
            "provider": session.get_providers()[0],
        }

    def probe(self, labels: list[str] | None, example: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The child's validation: the same probe as an uploaded ONNX version's."""
        result = model_probe(self.child, "onnx", self.signature, example, labels)
        return dataclasses.asdict(result)

    def artifact(self) -> dict[str, Any]:
        """The child's bytes and sha256, for the parent to store; and the tool versions."""
        data = self.child.read_bytes()
        return {"data": data, "sha256": hashlib.sha256(data).hexdigest(), "tools": tool_versions()}

    def close(self) -> None:
        for path in self.folder.glob("*"):
            path.unlink(missing_ok=True)
        self.folder.rmdir()


def _timed(call: Any, repeats: int) -> list[float]:
    call()  # warm-up, not counted
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000.0)
    return samples


def _session(path: Path, *, cuda: bool) -> Any:
    """An ONNX Runtime session on the CPU (or CUDA first), with as many threads as torch uses."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


def _initializer_bytes(path: Path) -> int:
    """Bytes of an ONNX graph's weights (its initializers), as loaded in memory."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return int(sum(numpy_helper.to_array(tensor).nbytes for tensor in graph.initializer))
