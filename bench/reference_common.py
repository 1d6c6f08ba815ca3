"""What both reference servers run: the benchmark models in-process, one torch thread, no batching.

`BENCH_MODELS` names the TorchScript files to serve (`mlp=/tmp/…/mlp.pt,cnn=/tmp/…/cnn.pt`),
the same artifacts the portal serves. A request is one OIP v2 JSON body; the answer is the
first output as OIP v2 JSON, so the references do the same decoding and encoding work per
request as the portal's JSON path, minus authentication, routing and batching.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

# Input shape of one example, without the batch dimension.
ITEM_SHAPES: dict[str, tuple[int, ...]] = {"mlp": (64,), "cnn": (3, 64, 64)}
OUTPUT_NAME = "output__0"

torch.set_num_threads(1)


def models_load(spec: str | None = None) -> dict[str, Any]:
    """The models named in `spec` (default: $BENCH_MODELS), loaded and warmed up."""
    models: dict[str, Any] = {}
    for item in (spec if spec is not None else os.environ["BENCH_MODELS"]).split(","):
        name, _, path = item.partition("=")
        module = torch.jit.load(path, map_location="cpu").eval()
        example = torch.zeros((1, *ITEM_SHAPES[name]))
        with torch.inference_mode():
            # TorchScript's profiling executor optimises the graph over the first few calls.
            for _ in range(5):
                module(example)
        models[name] = module
    return models


def predict(models: dict[str, Any], name: str, body: bytes) -> bytes:
    """Decode one OIP v2 JSON request, run the model on it, encode the answer."""
    request = json.loads(body)
    tensor = request["inputs"][0]
    array = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    with torch.inference_mode():
        output = models[name](torch.from_numpy(array))
    answer = {
        "model_name": name,
        "outputs": [
            {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(output.shape), "data": output.reshape(-1).tolist()}
        ],
    }
    return json.dumps(answer).encode()


def model_from_path(path: str, models: dict[str, Any]) -> str | None:
    """The model a `/v2/models/{name}/infer` path addresses, or None."""
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "infer" and parts[2] in models:
        return parts[2]
    return None
