"""torch.export archives (.pt2) written by torch.export.save."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from inference.runtimes.base import ModelLoadError, ModelRuntime, first_line

_LOAD_LOCK = threading.Lock()


class ExportedProgramRuntime(ModelRuntime):
    format = "exported_program"

    def __init__(self, module: torch.nn.Module, device: torch.device, program: torch.export.ExportedProgram) -> None:
        super().__init__(module, device)
        self.program = program

    @classmethod
    def load(cls, path: Path, device: torch.device, *, task: str = "") -> ExportedProgramRuntime:
        try:
            # torch.export.load keeps its deserializer in a global: two threads of one
            # worker process (the serving loop, a validation or job task) must not overlap.
            with _LOAD_LOCK:
                program = torch.export.load(str(path))
            module = program.module().to(device)
        except Exception as exc:
            raise ModelLoadError(f"torch.export.load failed: {first_line(exc)}") from exc
        return cls(module, device, program)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.program.parameters())
