"""The per-process model cache of a worker: LRU, bounded by a memory budget.

A worker keeps the models it serves resident, on CUDA when the worker has a GPU. Each
model is loaded from storage with its sha256 verified (a Hugging Face archive is unpacked
into a directory cached by that hash), warmed up with one forward pass, and evicted
least-recently-used first when the budget would be exceeded.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from django.conf import settings

from core.datatypes import NUMPY_DTYPES
from inference.generation import Engine, GenerationRequest, SamplingParams
from inference.runtimes import ModelRuntime, TextRuntime, texts_of
from inference.services import PROBE_SEQUENCE, device_select, exception_summary, model_load, model_path, random_tensor
from registry import selectors, services
from registry.models import VersionStatus
from registry.text_tasks import TextTask

logger = logging.getLogger(__name__)


class ModelUnavailable(Exception):
    """The version cannot be served by this worker (gone, not ready, fails to load)."""


@dataclass
class LoadedModel:
    """A model resident in a worker, with what serving needs to know about it."""

    version_id: int
    model_name: str
    version: int
    signature: dict[str, Any]
    runtime: ModelRuntime
    size_bytes: int
    batching: bool
    max_batch_size: int
    loaded_at: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # A text model (TextRuntime): takes a BYTES `text` input and per-request parameters.
    text: bool = field(init=False)

    def __post_init__(self) -> None:
        self.text = isinstance(self.runtime, TextRuntime)

    @property
    def task(self) -> str:
        """The text task ("" for a tensor model)."""
        return cast(TextRuntime, self.runtime).task if self.text else ""

    @property
    def generative(self) -> bool:
        """Whether it generates text: served by the worker's generation loop, not by `predict`."""
        return self.task == TextTask.TEXT_GENERATION

    @property
    def input_names(self) -> list[str]:
        return [spec["name"] for spec in self.signature["inputs"]]

    def predict(
        self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str, np.ndarray]]:
        """One forward pass; inputs by name, outputs as (name, datatype, array) in signature order.

        A text model reads its texts from its one BYTES input (object array of bytes or str, or
        a numpy string array) and applies `parameters` (top_k, truncate, normalize) to all of
        them; TextInputError when a text or a parameter is bad. Tensor models ignore `parameters`.
        """
        if self.text:
            return self._predict_texts(inputs[self.input_names[0]], parameters or {})
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in self.input_names]
        # One forward at a time per model: TorchScript and exported modules are not re-entrant
        # on every backend, and the batcher already gives each pass the whole batch.
        with self.lock:
            results = self.runtime.predict(tensors)
        outputs = []
        for spec, (_, tensor) in zip(self.signature["outputs"], results, strict=True):
            array = tensor.detach().to("cpu").numpy()
            outputs.append((spec["name"], spec["datatype"], array.astype(NUMPY_DTYPES[spec["datatype"]], copy=False)))
        return outputs

    def _predict_texts(self, array: np.ndarray, parameters: Mapping[str, Any]) -> list[tuple[str, str, np.ndarray]]:
        runtime = cast(TextRuntime, self.runtime)
        texts = texts_of(np.asarray(array))
        # The tokenizer is not re-entrant either (truncation settings live on the Rust object).
        with self.lock:
            outputs = runtime.predict_texts(texts, parameters, max_rows=self.max_batch_size)
        return [(spec["name"], spec["datatype"], outputs[spec["name"]]) for spec in self.signature["outputs"]]


@dataclass(frozen=True)
class ModelSource:
    """What loading a version needs: a verified local artifact and the version's serving facts (JSON-safe)."""

    version_id: int
    model_name: str
    version: int
    format: str
    task: str
    sha256: str
    path: str
    signature: dict[str, Any]
    batching: bool
    max_batch_size: int
    serving_queue: str

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSource:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def model_source(version_id: int) -> ModelSource:
    """A ready version's artifact, fetched and verified by sha256 (unpacked for archives); ModelUnavailable if not."""
    try:
        version = selectors.version_for_serving(version_id)
    except Exception as exc:
        raise ModelUnavailable(str(exc)) from exc
    if version.status != VersionStatus.READY:
        raise ModelUnavailable(f"{version} is {version.status}, not ready")
    try:
        path = model_path(services.version_artifact_path(version), version.format, version.sha256)
    except Exception as exc:
        raise ModelUnavailable(f"{version} could not be loaded: {exc}") from exc
    return ModelSource(
        version_id=version.pk,
        model_name=version.model.name,
        version=version.version,
        format=version.format,
        task=version.task,
        sha256=version.sha256,
        path=str(path),
        signature=version.signature,
        batching=bool(version.validation.get("batching")),
        max_batch_size=version.max_batch_size,
        serving_queue=version.model.serving_queue,
    )


def model_from_source(source: ModelSource) -> LoadedModel:
    """Load and warm up a model from its source (this is where model code first runs)."""
    try:
        runtime = model_load(Path(source.path), source.format, device_select(), task=source.task)
    except Exception as exc:
        raise ModelUnavailable(f"{source.model_name} v{source.version} could not be loaded: {exc}") from exc
    model = LoadedModel(
        version_id=source.version_id,
        model_name=source.model_name,
        version=source.version,
        signature=source.signature,
        runtime=runtime,
        size_bytes=runtime.memory_bytes(),
        batching=source.batching,
        max_batch_size=source.max_batch_size,
    )
    try:
        _warm_up(model)
    except Exception as exc:  # a model that fails on its own example input cannot be served (a 503, not a hang)
        raise ModelUnavailable(
            f"{source.model_name} v{source.version} failed its warm-up forward: {exception_summary(exc)}"
        ) from exc
    return model


def _warm_up(model: LoadedModel) -> None:
    """One forward on inputs built from the signature, so the first request pays no setup."""
    if model.generative:
        # Two greedy tokens of the example prompt through an engine of its own: a prefill and a decode step.
        runtime = cast(TextRuntime, model.runtime)
        engine = Engine(runtime.module, runtime.tokenizer, max_sequences=1)
        with model.lock:
            engine.submit(GenerationRequest(runtime.example_text(), SamplingParams(max_tokens=2, temperature=0.0)))
            while engine.has_work():
                engine.step()
        return
    if model.text:
        example = cast(TextRuntime, model.runtime).example_text()
        model.predict({model.input_names[0]: np.array([example.encode()], dtype=object)})
        return
    tensors = {spec["name"]: random_tensor(spec, 1, PROBE_SEQUENCE).numpy() for spec in model.signature["inputs"]}
    model.predict(tensors)


class ModelCache:
    """Loaded models keyed by version id, least recently used first out."""

    def __init__(self, budget_bytes: int, source: Callable[[int], ModelSource] | None = None) -> None:
        self.budget_bytes = budget_bytes
        # Where a version's artifact and facts come from: the database and storage in a
        # trusted process, the parent over the sandbox channel in a model host.
        self.source: Callable[[int], ModelSource] = source or model_source
        self._models: OrderedDict[int, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        # One load at a time per process: torch.export.load is not thread-safe (the serving
        # thread and a job or evaluation task may load at once), and a version loads only once.
        self._loading = threading.Lock()
        # Versions asked for and not yet resident: the worker's heartbeat publishes them, so a
        # gateway answers 503 "loading" instead of waiting past its timeout on a slow load.
        self._pending: dict[int, int] = {}

    def get(self, version_id: int) -> LoadedModel:
        """The loaded model for a version, loading (and evicting) as needed."""
        with self._lock:
            model = self._models.get(version_id)
            if model is not None:
                self._models.move_to_end(version_id)
                return model
        with self._lock:
            self._pending[version_id] = self._pending.get(version_id, 0) + 1
        try:
            with self._loading:
                with self._lock:
                    model = self._models.get(version_id)
                if model is None:
                    model = self._load(version_id)
        finally:
            with self._lock:
                self._pending[version_id] -= 1
                if not self._pending[version_id]:
                    del self._pending[version_id]
        with self._lock:
            self._models[version_id] = model
            self._models.move_to_end(version_id)
            self._evict(keep=version_id)
        return model

    def _load(self, version_id: int) -> LoadedModel:
        source = self.source(version_id)
        started = time.perf_counter()
        model = model_from_source(source)
        logger.info("loaded %s v%s (%.1f MB) in %.3fs", source.model_name, source.version, model.size_bytes / 1e6,
                    time.perf_counter() - started)  # fmt: skip
        return model

    def _evict(self, keep: int) -> None:
        while len(self._models) > 1 and sum(m.size_bytes for m in self._models.values()) > self.budget_bytes:
            version_id, model = next((k, m) for k, m in self._models.items() if k != keep)
            del self._models[version_id]
            logger.info("evicted %s v%s from the model cache", model.model_name, model.version)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def loading(self) -> list[int]:
        """Version ids being loaded (or waiting for another load to finish) in this process."""
        with self._lock:
            return [version_id for version_id in self._pending if version_id not in self._models]

    def discard(self, version_id: int) -> None:
        with self._lock:
            self._models.pop(version_id, None)

    def reset(self) -> None:
        """Forget every model (tests, and a worker told to reload)."""
        with self._lock:
            self._models.clear()


_cache: ModelCache | None = None


def model_cache() -> ModelCache:
    """This process's cache (created on first use with INFERENCE_CACHE_BYTES)."""
    global _cache
    if _cache is None:
        _cache = ModelCache(settings.INFERENCE_CACHE_BYTES)
    return _cache


__all__ = ["LoadedModel", "ModelCache", "ModelSource", "ModelUnavailable", "model_cache", "model_from_source",
           "model_source"]  # fmt: skip
