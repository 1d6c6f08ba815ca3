"""TorchScript archives written by torch.jit.save."""

from __future__ import annotations

from pathlib import Path

import torch

from inference.runtimes.base import ModelLoadError, ModelRuntime, first_line


class TorchScriptRuntime(ModelRuntime):
    format = "torchscript"

    @classmethod
    def load(cls, path: Path, device: torch.device, *, task: str = "") -> TorchScriptRuntime:
        try:
            module = torch.jit.load(str(path), map_location=device)
        except Exception as exc:  # torch raises RuntimeError, ValueError, pickle errors…
            raise ModelLoadError(f"torch.jit.load failed: {first_line(exc)}") from exc
        module.eval()
        return cls(module, device)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())
