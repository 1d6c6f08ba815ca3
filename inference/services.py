"""Model runtime operations used by the registry and (later) the serving path."""

from __future__ import annotations

import logging
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from django.conf import settings

from core.datatypes import TORCH_DTYPES, datatype_of_array, datatype_of_tensor, example_array, is_floating
from inference.generation import Engine, GenerationRequest, SamplingParams
from inference.runtimes import ModelLoadError, ModelRuntime, TextRuntime, runtime_for
from registry.artifacts import artifact_onnx_path, artifact_unpacked, artifact_zip_check
from registry.models import ModelFormat
from registry.text_tasks import TEXT_INPUT, TextTask

logger = logging.getLogger(__name__)

# Sizes used for -1 dimensions when no example input is given.
PROBE_BATCH = 1
PROBE_SEQUENCE = 8
LATENCY_RUNS = 20
LATENCY_BUDGET_SECONDS = 2.0
# Tokens a generative model produces greedily from its example prompt at validation.
PROBE_GENERATION_TOKENS = 4


class ProbeFailed(Exception):
    """The model cannot serve its signature; the message is shown to the uploader."""


@dataclass
class ProbeResult:
    """What validation learned about a model by loading and running it."""

    outputs: list[dict[str, Any]]
    parameter_count: int
    load_seconds: float
    latency_ms: dict[str, float]
    device: str
    batching: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "parameter_count": self.parameter_count,
            "load_seconds": round(self.load_seconds, 4),
            "latency_ms": self.latency_ms,
            "device": self.device,
            "batching": self.batching,
            "torch_version": torch.__version__,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
            **self.extra,
        }


def device_select(preference: str | None = None) -> torch.device:
    """`cuda` when available (or asked for), else `cpu`; INFERENCE_DEVICE overrides."""
    preference = preference or settings.INFERENCE_DEVICE
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"INFERENCE_DEVICE={preference} but CUDA is not available on this worker")
    return device


def random_tensor(spec: dict[str, Any], batch: int, sequence: int) -> torch.Tensor:
    """A tensor that fits a signature entry: -1 dims become `batch` (first) or `sequence` (others)."""
    shape = [batch if i == 0 and d == -1 else (sequence if d == -1 else d) for i, d in enumerate(spec["shape"])]
    dtype = TORCH_DTYPES[spec["datatype"]]
    if is_floating(spec["datatype"]):
        return torch.randn(shape).to(dtype)
    if spec["datatype"] == "BOOL":
        return torch.rand(shape) > 0.5
    # Small non-negative integers are valid token ids / class indices for any model.
    return torch.randint(0, 2, shape).to(dtype)


def _example_tensors(example: list[dict[str, Any]], order: list[str], repeat: int) -> list[torch.Tensor]:
    by_name = {tensor["name"]: tensor for tensor in example}
    tensors = []
    for name in order:
        tensor = torch.from_numpy(example_array(by_name[name]))
        tensors.append(torch.cat([tensor] * repeat) if repeat > 1 and tensor.dim() else tensor)
    return tensors


def _output_specs(
    first: list[tuple[str | None, torch.Tensor]],
    second: list[tuple[str | None, torch.Tensor]] | None,
    declared: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Output signature from one or two probe runs: dims that changed between runs are -1."""
    if declared and len(declared) != len(first):
        raise ProbeFailed(f"the signature declares {len(declared)} output(s) but the model returned {len(first)}")
    specs = []
    for index, (name, tensor) in enumerate(first):
        shape = list(tensor.shape)
        if second is not None:
            other = second[index][1]
            if other.dim() != tensor.dim():
                raise ProbeFailed(f"output {index} changes rank with the batch size")
            shape = [a if a == b else -1 for a, b in zip(tensor.shape, other.shape, strict=True)]
        try:
            datatype = datatype_of_tensor(tensor)
        except ValueError as exc:
            raise ProbeFailed(str(exc)) from None
        spec_name = name or f"output__{index}"
        if declared:
            want = declared[index]
            spec_name = want["name"]
            if want["datatype"] != datatype:
                raise ProbeFailed(f"output {spec_name} is {datatype}, the signature says {want['datatype']}")
            if len(want["shape"]) != len(shape) or any(
                w != -1 and w != s for w, s in zip(want["shape"], shape, strict=True)
            ):
                raise ProbeFailed(f"output {spec_name} has shape {shape}, the signature says {want['shape']}")
            shape = want["shape"]
        specs.append({"name": spec_name, "datatype": datatype, "shape": shape})
    return specs


def model_path(fetched: Path, format_name: str, sha256: str) -> Path:
    """Where a format's runtime loads a fetched artifact from: the file, or the directory it unpacks to."""
    if format_name == ModelFormat.ONNX:
        return artifact_onnx_path(fetched, sha256)
    return (
        artifact_unpacked(fetched, sha256)
        if runtime_for(format_name).unpacked
        else artifact_zip_check(fetched, format_name)
    )


def model_load(path: Path, format_name: str, device: torch.device | None = None, *, task: str = "") -> ModelRuntime:
    """Load an artifact with its format's runtime (ModelLoadError when it is not a model)."""
    return runtime_for(format_name).load(path, device or device_select(), task=task)


def model_probe(
    path: Path,
    format_name: str,
    signature: dict[str, Any],
    example: list[dict[str, Any]] | None = None,
    labels: list[str] | None = None,
    *,
    task: str = "",
) -> ProbeResult:
    """Load a model and run it on inputs built from its signature; ProbeFailed says why not.

    With a variable first dimension the model is also run on a batch of two, which both
    proves it can be batched and shows which output dimensions follow the batch. A text
    model runs its task on the example's text (or a default one), alone and beside a longer one.
    """
    device = device_select()
    started = time.perf_counter()
    try:
        runtime = model_load(path, format_name, device, task=task)
    except ModelLoadError as exc:
        raise ProbeFailed(str(exc)) from exc
    load_seconds = time.perf_counter() - started
    if isinstance(runtime, TextRuntime):
        return _text_probe(runtime, signature, example, labels, load_seconds)
    specs = signature["inputs"]
    order = [spec["name"] for spec in specs]
    batching = all(spec["shape"] and spec["shape"][0] == -1 for spec in specs)

    def build(batch: int, sequence: int) -> list[torch.Tensor]:
        if example:
            return _example_tensors(example, order, batch)
        return [random_tensor(spec, batch, sequence) for spec in specs]

    probe_inputs = build(PROBE_BATCH, PROBE_SEQUENCE)
    try:
        first = runtime.predict(probe_inputs)
    except Exception as exc:
        raise ProbeFailed(
            f"the forward pass failed on an input built from the signature: {exception_summary(exc)}"
        ) from exc
    second = None
    if batching:
        try:
            second = runtime.predict(build(2, PROBE_SEQUENCE + 3 if not example else PROBE_SEQUENCE))
        except Exception as exc:
            raise ProbeFailed(
                "the signature's first dimension is -1 (batch) but the model failed on a batch of 2: "
                f"{exception_summary(exc)}. Declare a fixed first dimension if the model cannot batch."
            ) from exc
    try:
        outputs = _output_specs(first, second, signature.get("outputs") or [])
    except TypeError as exc:
        raise ProbeFailed(str(exc)) from exc
    if labels:
        last = outputs[0]["shape"][-1] if outputs[0]["shape"] else None
        if last != len(labels):
            raise ProbeFailed(
                f"{len(labels)} labels were given but the first output ({outputs[0]['name']}) has {last} values per row"
            )
    return ProbeResult(
        outputs=outputs,
        parameter_count=runtime.parameter_count(),
        load_seconds=load_seconds,
        latency_ms=_latency(lambda: runtime.predict(probe_inputs), runtime.device),
        device=str(runtime.device),
        batching=batching,
        extra=runtime.describe(),
    )


def _example_text(example: list[dict[str, Any]] | None) -> str | None:
    """The first text of a version's example input ({"name": "text", "datatype": "BYTES", "data": [...]})."""
    for tensor in example or []:
        data = tensor.get("data")
        if tensor.get("name") == TEXT_INPUT and isinstance(data, list) and data and isinstance(data[0], str):
            return data[0]
    return None


def _text_outputs_check(outputs: dict[str, Any], declared: list[dict[str, Any]], rows: int) -> None:
    names = [spec["name"] for spec in declared]
    if list(outputs) != names:
        raise ProbeFailed(f"the model answered {', '.join(outputs)}; its task's signature says {', '.join(names)}")
    for spec in declared:
        array = outputs[spec["name"]]
        datatype = "BYTES" if array.dtype == object else datatype_of_array(array)
        if datatype != spec["datatype"]:
            raise ProbeFailed(f"output {spec['name']} is {datatype}, the signature says {spec['datatype']}")
        shape = [rows, *spec["shape"][1:]]
        if array.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, array.shape, strict=True)):
            found = list(array.shape)
            raise ProbeFailed(f"output {spec['name']} has shape {found}, the signature says {spec['shape']}")


def _text_probe(
    runtime: TextRuntime,
    signature: dict[str, Any],
    example: list[dict[str, Any]] | None,
    labels: list[str] | None,
    load_seconds: float,
) -> ProbeResult:
    """Run a text model's task on one text and on two of different lengths; check the outputs."""
    text = _example_text(example) or runtime.example_text()
    declared = signature.get("outputs") or []
    if runtime.task == TextTask.TEXT_GENERATION:
        return _generation_probe(runtime, declared, text, load_seconds)
    for texts in ([text], [text, f"{text} It is also one of the oldest and largest cities of Europe."]):
        try:
            outputs = runtime.predict_texts(texts, {}, max_rows=len(texts))
        except Exception as exc:
            reason = exception_summary(exc)
            raise ProbeFailed(f"the {runtime.task} model failed on the text {text!r}: {reason}") from exc
        _text_outputs_check(outputs, declared, len(texts))
    if runtime.task == TextTask.TEXT_CLASSIFICATION and labels and outputs["scores"].shape[1] != len(labels):
        raise ProbeFailed(f"{len(labels)} labels were given but the model scores {outputs['scores'].shape[1]} classes")
    return ProbeResult(
        outputs=declared,
        parameter_count=runtime.parameter_count(),
        load_seconds=load_seconds,
        latency_ms=_latency(lambda: runtime.predict_texts([text], {}, max_rows=1), runtime.device),
        device=str(runtime.device),
        batching=True,
        extra=runtime.describe(),
    )


def generation_run(runtime: TextRuntime, prompt: str, max_tokens: int) -> list[int]:
    """The greedy continuation of `prompt` (token ids) through an engine of its own, as the worker serves it."""
    engine = Engine(runtime.module, runtime.tokenizer, max_sequences=1)
    engine.submit(GenerationRequest(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0)))
    tokens: list[int] = []
    while engine.has_work():
        for output in engine.step():
            tokens += output.token_ids
    return tokens


def _generation_probe(
    runtime: TextRuntime, declared: list[dict[str, Any]], prompt: str, load_seconds: float
) -> ProbeResult:
    """Generate a few greedy tokens of the example prompt; the latency is that whole (prefill + decode) run."""
    try:
        tokens = generation_run(runtime, prompt, PROBE_GENERATION_TOKENS)
    except Exception as exc:
        raise ProbeFailed(
            f"the text-generation model failed on the prompt {prompt!r}: {exception_summary(exc)}"
        ) from exc
    if not tokens:
        raise ProbeFailed(f"the text-generation model generated nothing from the prompt {prompt!r}")
    describe = runtime.describe()
    if describe.get("chat_template"):
        try:
            runtime.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:
            raise ProbeFailed(
                f"the tokenizer's chat template fails on one user message: {exception_summary(exc)}"
            ) from exc
    latency = _latency(lambda: generation_run(runtime, prompt, PROBE_GENERATION_TOKENS), runtime.device)
    return ProbeResult(
        outputs=declared,
        parameter_count=runtime.parameter_count(),
        load_seconds=load_seconds,
        latency_ms={**latency, "tokens": PROBE_GENERATION_TOKENS},
        device=str(runtime.device),
        batching=True,
        extra={**describe, "example_completion": runtime.tokenizer.decode(tokens)},
    )


def _latency(run: Callable[[], object], device: torch.device) -> dict[str, float]:
    """Median and mean forward time at the probe batch, after warm-up."""
    for _ in range(3):
        run()
    samples: list[float] = []
    deadline = time.perf_counter() + LATENCY_BUDGET_SECONDS
    while len(samples) < LATENCY_RUNS and time.perf_counter() < deadline:
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "p50": round(statistics.median(samples), 4),
        "mean": round(statistics.fmean(samples), 4),
        "runs": len(samples),
        "batch": PROBE_BATCH,
    }


def exception_summary(exc: BaseException) -> str:
    """`Type: last line of the message` (at most 400 characters), for reasons shown to people."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1].strip()[:400]
    # TorchScript's messages end with their own "RuntimeError: ..." line: name the type once.
    return last if last.startswith(f"{type(exc).__name__}:") else f"{type(exc).__name__}: {last}"
