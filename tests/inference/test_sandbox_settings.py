"""A model host is configured with only the settings in SETTINGS_GIVEN (inference.sandbox.spawn):
every setting the code it runs reads must be among them, or the host fails where the worker
did not (a heartbeat thread that died on a missing setting made every sandboxed worker look
dead five seconds after it started)."""

from __future__ import annotations

import re
from pathlib import Path

from inference.sandbox.spawn import SETTINGS_GIVEN

ROOT = Path(__file__).resolve().parents[2]
# What a serving or task host imports and runs (the parent resolves versions and artifacts).
HOST_CODE = [
    "inference/serving.py", "inference/cache.py", "inference/text.py", "inference/wire.py",
    "inference/completions.py", "inference/generation", "inference/runtimes", "inference/sandbox/hosted.py",
    "inference/sandbox/host.py", "registry/archives.py", "registry/huggingface.py", "registry/onnx_graph.py",
    "core/redis.py",
]  # fmt: skip
# Set by the host itself (inference.sandbox.host / spawn.host_settings), or read only on the
# parent's side of a function the host never calls.
SET_BY_HOST = {"DATA_DIR", "INFERENCE_REDIS_URL", "SECRET_KEY", "DATABASES", "MODEL_SANDBOX"}
SETTING = re.compile(r"\bsettings\.([A-Z][A-Z0-9_]+)")


def read_settings() -> set[str]:
    names: set[str] = set()
    for entry in HOST_CODE:
        path = ROOT / entry
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            names.update(SETTING.findall(source.read_text()))
    return names


def test_every_setting_the_host_code_reads_is_given_to_the_host():
    read = read_settings()
    assert "INFERENCE_HEARTBEAT_SECONDS" in read  # the scan sees the serving loop
    assert read - SET_BY_HOST - set(SETTINGS_GIVEN) == set()
