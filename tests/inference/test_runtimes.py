"""Model runtimes under the threads of one worker process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from inference.runtimes.exported_program import ExportedProgramRuntime


def test_exported_programs_load_from_several_threads_at_once(model_files: dict[str, Path]):
    # The serving thread and a validation or job task may load .pt2 files at the same time.
    with ThreadPoolExecutor(max_workers=6) as pool:
        runtimes = list(pool.map(lambda _: ExportedProgramRuntime.load(model_files["exported_program"],
                                                                         torch.device("cpu")), range(12)))  # fmt: skip
    outputs = [runtime.predict([torch.ones(2, 4)])[0][1] for runtime in runtimes]
    assert all(torch.equal(output, outputs[0]) for output in outputs)
