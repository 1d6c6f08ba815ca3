"""torch.export archives (.pt2) written by torch.export.save."""

from __future__ import annotations

from pathlib import Path

import torch

from inference.runtimes.base import ModelLoadError, ModelRuntime
from inference.runtimes.torchscript import _first_line


class ExportedProgramRuntime(ModelRuntime):
    format = "exported_program"

    def __init__(self, module: torch.nn.Module, device: torch.device, program: torch.export.ExportedProgram) -> None:
        super().__init__(module, device)
        self.program = program

    @classmethod
    def load(cls, path: Path, device: torch.device) -> ExportedProgramRuntime:
        try:
            program = torch.export.load(str(path))
            module = program.module().to(device)
        except Exception as exc:
            raise ModelLoadError(f"torch.export.load failed: {_first_line(exc)}") from exc
        return cls(module, device, program)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.program.parameters())
