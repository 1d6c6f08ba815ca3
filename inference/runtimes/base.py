"""The interface every model format implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch


class ModelLoadError(Exception):
    """The artifact could not be loaded as a model of its format; the message says why."""


class ModelRuntime(ABC):
    """A loaded model: `predict` takes input tensors in signature order, returns named outputs."""

    format: ClassVar[str]

    def __init__(self, module: Any, device: torch.device) -> None:
        self.module = module
        self.device = device

    @classmethod
    @abstractmethod
    def load(cls, path: Path, device: torch.device) -> ModelRuntime:
        """Load the artifact at `path` onto `device`; raise ModelLoadError when it is not one."""

    @abstractmethod
    def parameter_count(self) -> int:
        """Number of scalar parameters (weights and biases)."""

    def predict(self, inputs: Sequence[torch.Tensor]) -> list[tuple[str | None, torch.Tensor]]:
        """One forward pass; outputs as (name or None, tensor) in the model's order."""
        with torch.inference_mode():
            result = self.module(*[tensor.to(self.device) for tensor in inputs])
        return flatten_outputs(result)


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
