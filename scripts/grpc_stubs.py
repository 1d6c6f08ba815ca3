"""Generate the Python modules of inference/grpc/predict_v2.proto (`make grpc-stubs`).

    python scripts/grpc_stubs.py [OUTPUT_ROOT]

Runs grpcio-tools' protoc (messages, their type stubs and the service classes) into
OUTPUT_ROOT (default: the repository, next to the .proto), then makes one change to the
generated messages: their descriptors go into a pool of their own instead of protobuf's
default pool. The protocol's package is `inference`, and tritonclient.grpc registers its own
`inference.*` messages in the default pool: two definitions of one name in one pool make the
second import fail, so a process holding both (a test that starts a client) could not load
ours. The messages and their bytes on the wire are unchanged.

tests/inference/test_grpc_stubs.py regenerates into a temporary directory and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = "inference/grpc/predict_v2.proto"
MESSAGES = "inference/grpc/predict_v2_pb2.py"
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(output_root: Path) -> list[Path]:
    """Write the generated modules under `output_root`; returns their paths."""
    output_root.mkdir(parents=True, exist_ok=True)
    out = str(output_root)
    status = protoc.main(
        ["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
         str(ROOT / PROTO)]
    )  # fmt: skip
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    messages = output_root / MESSAGES
    text = messages.read_text()
    if text.count(DEFAULT_POOL) != 1:
        raise SystemExit(f"{MESSAGES}: expected one {DEFAULT_POOL!r} to replace (a new protoc layout?)")
    messages.write_text(text.replace(DEFAULT_POOL, OWN_POOL))
    return [output_root / name for name in (MESSAGES, MESSAGES + "i", MESSAGES.replace("_pb2", "_pb2_grpc"))]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path)
