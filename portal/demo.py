"""Small PyTorch models built on the spot, for the demo seed, tests and benchmarks.

Nothing here downloads weights: each model is defined and (where it matters) trained
in a second or two from synthetic data.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IRIS_LABELS = ["setosa", "versicolor", "virginica"]
IRIS_SIGNATURE = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]}


def _iris_like_data(samples_per_class: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian clusters in four dimensions, shaped like the iris measurements."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    features = torch.cat([c + 0.3 * torch.randn(samples_per_class, 4, generator=generator) for c in centres])
    labels = torch.arange(3).repeat_interleave(samples_per_class)
    return features, labels


def iris_classifier(hidden: int = 16, steps: int = 200, seed: int = 0) -> nn.Module:
    """A 4→hidden→3 MLP trained for `steps` steps on iris-like clusters (logits out)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
    features, labels = _iris_like_data(seed=seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(features), labels).backward()
        optimiser.step()
    return model.eval()


def save_torchscript(model: nn.Module, path: Path) -> Path:
    """torch.jit.script the model and save it."""
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def save_exported_program(
    model: nn.Module, example: tuple[torch.Tensor, ...], path: Path, batch_dim: bool = True
) -> Path:
    """torch.export the model (first dimension dynamic when `batch_dim`) and save it as .pt2."""
    dynamic = tuple({0: torch.export.Dim("batch", min=1, max=4096)} for _ in example) if batch_dim else None
    program = torch.export.export(model.eval(), example, dynamic_shapes=dynamic)
    torch.export.save(program, str(path))
    return path
