"""The interface every model format implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch


class ModelLoadError(Exception):
    """The artifact could not be loaded as a model of its format; the message says why."""


class TextInputError(ValueError):
    """A text request the model cannot run (empty, too long, bad parameters); a 400 for the caller."""


class ModelRuntime(ABC):
    """A loaded model: `predict` takes input tensors in signature order, returns named outputs."""

    format: ClassVar[str]
    # True when the artifact is an archive that is unpacked into a directory before `load`.
    unpacked: ClassVar[bool] = False

    def __init__(self, module: Any, device: torch.device) -> None:
        self.module = module
        self.device = device

    @classmethod
    @abstractmethod
    def load(cls, path: Path, device: torch.device, *, task: str = "") -> ModelRuntime:
        """Load the artifact at `path` onto `device`; raise ModelLoadError when it is not one.

        `task` is the text task of formats that serve several (Hugging Face); others ignore it.
        """

    @abstractmethod
    def parameter_count(self) -> int:
        """Number of scalar parameters (weights and biases)."""

    def memory_bytes(self) -> int:
        """Bytes held by the model's parameters and buffers (what the model cache accounts)."""
        module = self.module
        tensors = [*module.parameters(), *module.buffers()] if hasattr(module, "buffers") else list(module.parameters())
        return sum(t.numel() * t.element_size() for t in tensors)

    def describe(self) -> dict[str, Any]:
        """Figures of the format that validation records beside the common ones (none by default)."""
        return {}

    def predict(self, inputs: Sequence[torch.Tensor]) -> list[tuple[str | None, torch.Tensor]]:
        """One forward pass; outputs as (name or None, tensor) in the model's order."""
        with torch.inference_mode():
            result = self.module(*[tensor.to(self.device) for tensor in inputs])
        return flatten_outputs(result)


class TextRuntime(ModelRuntime):
    """A model that takes texts, not tensors: it tokenises, batches and decodes itself."""

    task: str
    tokenizer: Any

    @abstractmethod
    def predict_texts(self, texts: list[str], parameters: Mapping[str, Any], *, max_rows: int) -> dict[str, np.ndarray]:
        """The task's outputs by name (one row per text) for `texts`, at most `max_rows` per forward.

        TextInputError when a text or a parameter is one the caller must fix.
        """

    @abstractmethod
    def example_text(self) -> str:
        """A text this model can run (warm-up and validation)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Figures validation records: vocabulary, maximum sequence length, dtype, versions."""

    def predict(self, inputs: Sequence[torch.Tensor]) -> list[tuple[str | None, torch.Tensor]]:
        raise TypeError(f"a {self.format} model takes texts (predict_texts), not tensors")


def texts_of(array: np.ndarray) -> list[str]:
    """The strings of a BYTES tensor (bytes, str or a numpy string array); TextInputError for non-UTF-8."""
    texts = []
    for index, item in enumerate(array.reshape(-1).tolist()):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TextInputError(f"text {index} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        elif not isinstance(item, str):
            raise TextInputError(f"text {index} is {type(item).__name__}, not a string")
        texts.append(item)
    return texts


def flatten_outputs(result: Any) -> list[tuple[str | None, torch.Tensor]]:
    """A model's return value (tensor, tuple/list of tensors, or dict of tensors) as a list."""
    if isinstance(result, torch.Tensor):
        return [(None, result)]
    items: list[tuple[str | None, Any]]
    if isinstance(result, Mapping):
        items = [(str(key), value) for key, value in result.items()]
    elif isinstance(result, (tuple, list)):
        items = [(None, value) for value in result]
    else:
        raise TypeError(f"the model returned {type(result).__name__}; expected a tensor, a tuple or a dict of tensors")
    for name, value in items:
        if not isinstance(value, torch.Tensor):
            where = f"output {name!r}" if name else "an output"
            raise TypeError(f"{where} is {type(value).__name__}, not a tensor")
    return items


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a loader's error can run to pages)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
