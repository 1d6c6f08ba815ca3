"""What a conversion may do: the targets a source takes, their options and tolerances, and the check
of a child's outputs against its parent's. Pure functions: no database, no torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.errors import InvalidInput

ONNX, ONNX_INT8, FP16 = "onnx", "onnx-int8", "fp16"
TARGETS = (ONNX, ONNX_INT8, FP16)

# How each source format reaches ONNX with torch 2.13 (measured: torch.onnx.export(dynamo=True)
# cannot trace a ScriptModule — torch.export refuses it in both strict modes — so TorchScript
# goes through the TorchScript-based exporter, the one path that takes it).
EXPORTERS: dict[str, str] = {
    "exported_program": "torch.onnx.export(dynamo=True) of the program's module",
    "torchscript": "torch.onnx.export(dynamo=False), the TorchScript exporter",
    "onnx": "none (already ONNX)",
}
# Targets per source format: an ONNX version can only be quantised.
SOURCE_TARGETS: dict[str, tuple[str, ...]] = {
    "exported_program": TARGETS,
    "torchscript": TARGETS,
    "onnx": (ONNX_INT8,),
}
OPSET_RANGE = (18, 23)


# The steps a run goes through (its "rows"), per target.
class ConversionFailed(Exception):
    """The export or quantisation failed (in the host); the message says why, shortened."""


STEPS: dict[str, tuple[str, ...]] = {
    ONNX: ("export", "compare", "validate", "store"),
    ONNX_INT8: ("export", "quantize", "compare", "validate", "store"),
    FP16: ("export", "compare", "validate", "store"),
}


def target_refusal(format_name: str, task: str, target: str, *, gpu_available: bool, derived_as: str = "") -> str:
    """Why a version of this format (and text task) cannot be converted to `target`, else ''.

    `derived_as` is the target a version was itself converted to ("" for an upload).
    """
    if target not in TARGETS:
        return f"Unknown target {target!r}; the targets are {', '.join(TARGETS)}."
    if derived_as in (ONNX_INT8, FP16):
        return f"This version is already a {derived_as} conversion; convert its parent instead."
    if format_name == "huggingface":
        return (
            "Hugging Face text versions cannot be converted: their input is text (BYTES) that the tokenizer "
            f"turns into tensors, and the {task or 'text'} runtime of an ONNX version takes tensors only."
        )
    allowed = SOURCE_TARGETS.get(format_name)
    if allowed is None:
        return f"Versions of format {format_name!r} cannot be converted."
    if target not in allowed:
        return f"A {format_name} version can be converted to {', '.join(allowed)} only, not {target}."
    if target == FP16 and not gpu_available:
        return (
            "fp16 conversions run on GPU hosts only, and no live worker serves the GPU queue "
            "(CONVERSION_GPU_QUEUE); convert to onnx or onnx-int8 instead."
        )
    return ""


def targets_allowed(format_name: str, task: str, *, gpu_available: bool, derived_as: str = "") -> list[str]:
    """The targets a version may be converted to now (what the version page offers)."""
    return [
        t
        for t in TARGETS
        if not target_refusal(format_name, task, t, gpu_available=gpu_available, derived_as=derived_as)
    ]


def options_parse(target: str, raw: Any) -> dict[str, Any]:
    """A conversion's options: `opset` (every target) and `per_channel` (onnx-int8); others refused."""
    if raw in (None, "", {}):
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput('options must be a JSON object, e.g. {"opset": 18}.', field="options")
    known = {"opset", *(("per_channel",) if target == ONNX_INT8 else ())}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidInput(
            f"Unknown option {unknown[0]!r} for {target}; known: {', '.join(sorted(known))}.", field="options"
        )
    options: dict[str, Any] = {}
    if "opset" in raw:
        opset = raw["opset"]
        low, high = OPSET_RANGE
        if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
            raise InvalidInput(f"options.opset must be an integer from {low} to {high}.", field="options")
        options["opset"] = opset
    if "per_channel" in raw:
        if not isinstance(raw["per_channel"], bool):
            raise InvalidInput("options.per_channel must be true or false.", field="options")
        options["per_channel"] = raw["per_channel"]
    return options


def derivation_text(target: str, options: dict[str, Any]) -> str:
    """The child's `derivation`: what was done, in a few words."""
    text = {
        ONNX: "converted to ONNX",
        ONNX_INT8: "converted to ONNX, int8 dynamic quantisation",
        FP16: "converted to ONNX, fp16",
    }[target]
    if options:
        text += " (" + ", ".join(f"{key}={value}" for key, value in sorted(options.items())) + ")"
    return text


@dataclass(frozen=True)
class Comparison:
    """How far a child's outputs are from its parent's on the same example."""

    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float
    within: bool
    # The output that differed most (by how far past its tolerance it went), or "".
    worst_output: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        """The figures, as a failure reason."""
        return (
            f"The converted model's outputs differ from its parent's beyond the tolerance on the validation "
            f"example: max abs diff {self.max_abs_diff:.3g}, max rel diff {self.max_rel_diff:.3g} "
            f"(output {self.worst_output!r}; allowed |child - parent| <= {self.atol:g} + {self.rtol:g} * |parent|)."
        )


def outputs_compare(
    parent: dict[str, np.ndarray], child: dict[str, np.ndarray], atol: float, rtol: float
) -> Comparison:
    """Compare outputs by name, elementwise as numpy.allclose; missing or reshaped outputs never pass."""
    max_abs = max_rel = 0.0
    worst, worst_excess, within = "", 0.0, True
    for name, expected in parent.items():
        got = child.get(name)
        if got is None or got.shape != expected.shape:
            shape = "missing" if got is None else f"shape {list(got.shape)}"
            raise ValueError(
                f"output {name!r} of the converted model is {shape}; the parent's is {list(expected.shape)}"
            )
        want, have = expected.astype(np.float64), got.astype(np.float64)
        if np.isfinite(want).all() and not np.isfinite(have).all():
            return Comparison(math.inf, math.inf, atol, rtol, False, name)
        diff = np.abs(have - want)
        if not diff.size:
            continue
        relative = diff / np.maximum(np.abs(want), np.finfo(np.float64).tiny)
        max_abs, max_rel = max(max_abs, float(diff.max())), max(max_rel, float(relative.max()))
        excess = float((diff - (atol + rtol * np.abs(want))).max())
        if excess > 0:
            within = False
        if excess > worst_excess or not worst:
            worst, worst_excess = name, excess
    return Comparison(max_abs, max_rel, atol, rtol, within, worst)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50 and p95 (nearest rank) of timings in milliseconds, with how many runs."""
    ordered = sorted(samples_ms)
    if not ordered:
        return {}

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p50": round(rank(0.5), 4), "p95": round(rank(0.95), 4), "runs": len(ordered)}
