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


def save_onnx(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    batch_dim: bool = True,
    external_data: bool = False,
) -> Path:
    """torch.onnx.export the model through torch.export (first dimension dynamic when `batch_dim`) to `path`.

    With `external_data` the weights go to `<path stem>.data` beside the .onnx file.
    """
    dynamic = tuple({0: torch.export.Dim("batch", min=1, max=4096)} for _ in example) if batch_dim else None
    program = torch.onnx.export(
        model.eval(), example, dynamo=True, dynamic_shapes=dynamic, input_names=input_names,
        output_names=output_names, verbose=False,
    )  # fmt: skip
    assert program is not None
    program.save(str(path), external_data=external_data)
    return path


class HousePrice(nn.Module):
    """Linear regression: price from rooms, age and distance (weights set, not trained)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[25.0, -0.8, -3.5]]))
            self.linear.bias.fill_(120.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


HOUSE_SIGNATURE = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 3]}]}


def mlp(seed: int = 0) -> nn.Module:
    """The benchmark MLP: FP32 [N, 64] → 256 → 256 → 10."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


MLP_SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]}


class SmallCNN(nn.Module):
    """The benchmark CNN: FP32 [N, 3, 64, 64] → three conv layers (32/64/128) with pooling → 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = nn.Linear(128, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1))


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN().eval()


CNN_SIGNATURE = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]}
CNN_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class TinyEncoder(nn.Module):
    """A one-layer transformer encoder over INT64 token ids of any length → two classes."""

    def __init__(self, vocabulary: int = 1000, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=64, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(width, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


def tiny_encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyEncoder().eval()


ENCODER_SIGNATURE = {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [-1, -1]}]}


def save_encoder(model: nn.Module, path: Path) -> Path:
    """torch.export the encoder with dynamic batch and sequence length."""
    batch, length = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("length", min=2, max=512)
    program = torch.export.export(
        model.eval(), (torch.randint(0, 1000, (2, 8)),), dynamic_shapes=({0: batch, 1: length},)
    )
    torch.export.save(program, str(path))
    return path
