"""Tasks' side of the sandbox: validation, batch jobs and evaluations run their model in a host of their own.

A task starts a fresh "task" host that may read only the one artifact it runs, sends it
requests over the channel (tensors as raw bytes with datatype and shape, never pickle),
and stops it when the task ends. With MODEL_SANDBOX=off the model is loaded in the worker
process as before (the operator's explicit opt-out).
"""

from __future__ import annotations

import builtins
import threading
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from inference import wire
from inference.cache import LoadedModel, ModelSource, ModelUnavailable, model_cache, model_source
from inference.conversions.recipes import ConversionFailed
from inference.runtimes import TextInputError
from inference.sandbox.channel import ChannelClosed, ChannelError
from inference.sandbox.spawn import Host, SandboxError, host_start
from inference.services import ProbeFailed, ProbeResult, model_probe

# Exceptions a host reports that keep their type on this side (the rest become RuntimeError).
_KINDS: dict[str, type[Exception]] = {"ProbeFailed": ProbeFailed, "ModelUnavailable": ModelUnavailable,
                                      "TextInputError": TextInputError,
                                      "ConversionFailed": ConversionFailed}  # fmt: skip
_BUILTINS = ("RuntimeError", "ValueError", "TypeError", "IndexError", "KeyError", "AssertionError", "MemoryError")


def sandbox_enabled() -> bool:
    """Whether model code runs in sandboxed hosts (MODEL_SANDBOX=require, the default)."""
    return bool(settings.MODEL_SANDBOX != "off")


def remote_exception(kind: str, message: str) -> Exception:
    """The exception a host reported, as this side raises it."""
    if kind in _KINDS:
        return _KINDS[kind](message)
    if kind in _BUILTINS:
        return getattr(builtins, kind)(message)  # type: ignore[no-any-return]
    return RuntimeError(f"{kind}: {message}")


class TaskHost:
    """A task's own model host: requests answered in order; `close` stops it."""

    def __init__(self, models: list[Path]) -> None:
        self.host: Host = host_start("task", models)

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            reply, _ = self.host.channel.call(request)
        except (ChannelClosed, ChannelError, OSError) as exc:
            raise self.host.death() from exc
        if not reply.get("ok"):
            raise remote_exception(str(reply.get("kind") or "RuntimeError"), str(reply.get("error") or ""))
        return reply

    def close(self) -> None:
        self.host.stop()

    def __enter__(self) -> TaskHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe(path: Path, format_name: str, signature: dict[str, Any], example: list[dict[str, Any]] | None,
          labels: list[str] | None, *, task: str = "") -> ProbeResult:  # fmt: skip
    """inference.services.model_probe, in a sandboxed host when the sandbox is on."""
    if not sandbox_enabled():
        return model_probe(path, format_name, signature, example, labels, task=task)
    with TaskHost([path]) as host:
        reply = host.call({"op": "probe", "path": str(path), "format": format_name, "signature": signature,
                           "example": example, "labels": labels, "task": task})  # fmt: skip
    return ProbeResult(**reply["result"])


class SandboxedModel:
    """A version loaded in a task's host; stands in for LoadedModel where a run calls `predict`."""

    def __init__(self, source: ModelSource) -> None:
        self.version_id = source.version_id
        self.model_name = source.model_name
        self.version = source.version
        self.signature = source.signature
        self.batching = source.batching
        self.max_batch_size = source.max_batch_size
        self.lock = threading.Lock()
        self.host = TaskHost([Path(source.path)])
        try:
            reply = self.host.call({"op": "load", "source": source.as_json()})
        except BaseException:
            self.host.close()
            raise
        self.text = bool(reply["text"])
        self.generative = bool(reply["generative"])

    @property
    def input_names(self) -> list[str]:
        return [spec["name"] for spec in self.signature["inputs"]]

    def predict(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any] | None = None
                ) -> list[tuple[str, str, np.ndarray]]:  # fmt: skip
        reply = self.host.call({"op": "predict", "inputs": wire.tensors_pack(inputs), "parameters": parameters})
        outputs = []
        for name, datatype, packed in reply["outputs"]:
            outputs.append((name, datatype, wire.tensors_unpack({"a": packed})["a"]))
        return outputs

    def generation_start(self, requests: list[dict[str, Any]], first: int, engine: dict[str, Any]) -> None:
        self.host.call({"op": "generate_start", "requests": requests, "first": first, "engine": engine})

    def close(self) -> None:
        self.host.close()


def model_open(version_id: int) -> LoadedModel | SandboxedModel:
    """A version ready to predict for a task: in its own sandboxed host, or (sandbox off) from this process's cache."""
    if not sandbox_enabled():
        return model_cache().get(version_id)
    source = model_source(version_id)
    try:
        return SandboxedModel(source)
    except SandboxError as exc:
        raise ModelUnavailable(f"{source.model_name} v{source.version}: {exc}") from exc


def model_close(model: Any) -> None:
    """Stop a task's host (nothing to do for a model of this process's cache)."""
    if isinstance(model, SandboxedModel):
        model.close()
