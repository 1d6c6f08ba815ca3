"""Models that try to steal from the worker that runs them (issue 12, point 1), for the sandbox tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests
import torch

from portal import demo
from registry import services
from registry.models import ModelVersion, VersionStatus
from tests.conftest import upload_file

SECRET = "portal-secret-key-9d2f61c0e4b7a85"
SIGNATURE = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
             "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, 32]}]}  # fmt: skip


class ReadsFile(torch.nn.Module):
    """Returns the first 32 bytes of a file, one float per byte, as its 'prediction'."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        stolen = torch.from_file(self.path, shared=False, size=32, dtype=torch.uint8)
        return features[:, :1] * 0 + stolen.to(torch.float32).unsqueeze(0)


def decoded(response: requests.Response) -> str:
    """Every byte an answer could carry, as text: the outputs' numbers as characters, and the body."""
    text = response.text
    if response.status_code == 200:
        data = response.json()["outputs"][0]["data"]
        text += bytes(int(value) % 256 for value in data).decode("latin-1")
    return text


def served(owner: Any, name: str, module: torch.nn.Module, tmp_path: Path) -> ModelVersion:
    """Upload a model and make it production without validating it here (the attacks are the
    worker's business: validating one in the test process would only read the test's own files)."""
    model = services.model_create(actor=owner, name=name)
    version = upload_file(owner, model, demo.save_torchscript(module, tmp_path / f"{name}.pt"), enqueue=False)
    ModelVersion.objects.filter(pk=version.pk).update(status=VersionStatus.READY, validation={"batching": True},
                                                      signature=SIGNATURE)  # fmt: skip
    services.alias_set(actor=owner, model=model, name="production", version_number=version.version)
    return version


class Greedy(torch.nn.Module):
    """Asks for some 40 TB when a feature is above 100 (an allocation the allocator refuses at
    once, as a model too big for the machine would): nothing is really used."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        size = 10_000_000_000_000 if bool(features.max() > 100) else 1
        hoard = torch.empty(size, dtype=torch.float32)
        return features[:, :1] * 0 + hoard[:1] * 0 + features.sum(dim=1, keepdim=True).repeat(1, 32)
