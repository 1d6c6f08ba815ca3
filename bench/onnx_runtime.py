"""ONNX Runtime against in-process torch on the benchmark MLP (64→256→256→10), one thread each.

The MLP is exported with torch.onnx.export (dynamo, dynamic batch) and run through the
portal's own runtime (inference.runtimes.onnx.OnnxRuntime: the session options the workers
use), against the same module under torch.inference_mode(). Forward time only, no serving
path: the median of `--rounds` rounds of `--iterations` forwards each, at batch 1 and 32,
interleaved so that a noisy machine hurts both alike. Run from the repository root::

    .venv/bin/python bench/onnx_runtime.py [--rounds 5] [--iterations 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from inference.runtimes.onnx import OnnxRuntime  # noqa: E402
from portal import demo  # noqa: E402


def per_forward_ms(run: Callable[[], object], iterations: int) -> float:
    for _ in range(min(iterations // 10, 200)):
        run()
    started = time.perf_counter()
    for _ in range(iterations):
        run()
    return (time.perf_counter() - started) / iterations * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    mlp = demo.mlp()
    with tempfile.TemporaryDirectory() as folder:
        path = demo.save_onnx(mlp, (torch.randn(2, 64),), Path(folder) / "mlp.onnx", input_names=["x"])
        runtime = OnnxRuntime.load(path, torch.device("cpu"))
    figures: dict[str, dict[str, float]] = {}
    for batch in (1, 32):
        x = torch.randn(batch, 64)
        expected = mlp(x).detach()
        torch.testing.assert_close(runtime.predict([x])[0][1], expected, rtol=1e-4, atol=1e-5)

        def torch_forward(x: torch.Tensor = x) -> object:
            with torch.inference_mode():
                return mlp(x)

        def onnx_forward(x: torch.Tensor = x) -> object:
            return runtime.predict([x])

        samples: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for _ in range(args.rounds):
            samples["torch"].append(per_forward_ms(torch_forward, args.iterations))
            samples["onnxruntime"].append(per_forward_ms(onnx_forward, args.iterations))
        torch_ms, onnx_ms = (statistics.median(samples[name]) for name in ("torch", "onnxruntime"))
        figures[f"batch {batch}"] = {
            "torch_ms": round(torch_ms, 4),
            "onnxruntime_ms": round(onnx_ms, 4),
            "onnxruntime_per_item_ms": round(onnx_ms / batch, 5),
            "torch_over_onnxruntime": round(torch_ms / onnx_ms, 2),
        }
    print(json.dumps({"provider": runtime.provider, "threads": 1, **figures}, indent=2))


if __name__ == "__main__":
    main()
