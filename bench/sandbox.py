"""What the model sandbox costs: start-up, per-syscall filter, a Redis round trip, a forward pass.

Each figure is measured in two fresh child processes started the same way, one that applies
the sandbox (inference.sandbox.policy, with the rules a task host gets) and one that does
not, so the difference is the sandbox's alone; and a real task host is started and timed
against a plain interpreter importing what a host imports. Run from the repository root::

    .venv/bin/python bench/sandbox.py [--rounds 3]

The online path itself has no extra hop: a serving host pops batches from Redis and pushes
replies exactly as the worker process did (end-to-end: `make bench` runs sandboxed by
default; MODEL_SANDBOX=off runs the same loops in the worker process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = textwrap.dedent("""
    import json, os, socket, sys, time
    from pathlib import Path
    sandboxed = sys.argv[1] == "1"
    rules = json.loads(sys.argv[2])
    import torch
    torch.set_num_threads(1)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10)).eval()
    a, b = socket.socketpair()
    figures = {}
    if sandboxed:
        from inference.sandbox import policy
        started = time.perf_counter()
        policy.sandbox_apply(policy.Policy(read=[Path(p) for p in rules["read"]],
                             write=[Path(p) for p in rules["write"]], list_only=[Path(p) for p in rules["list_only"]]))
        figures["apply_ms"] = (time.perf_counter() - started) * 1000
    n = 200_000
    started = time.perf_counter()
    for _ in range(n):
        os.getppid()
    figures["syscall_ns"] = (time.perf_counter() - started) / n * 1e9
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        a.send(b"x" * 64)
        b.recv(64)
    figures["send_recv_us"] = (time.perf_counter() - started) / n * 1e6
    x = torch.randn(1, 64)
    with torch.inference_mode():
        for _ in range(200):
            mlp(x)
        n = 5000
        started = time.perf_counter()
        for _ in range(n):
            mlp(x)
    figures["mlp_forward_us"] = (time.perf_counter() - started) / n * 1e6
    print(json.dumps(figures))
""")


def child(sandboxed: bool, rules: dict[str, list[str]], environment: dict[str, str], cwd: str) -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", CHILD, "1" if sandboxed else "0", json.dumps(rules)],
                            env=environment, cwd=cwd, capture_output=True, check=True, timeout=300)  # fmt: skip
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    django.setup()
    from inference.sandbox.spawn import host_environment, host_policy, host_start

    with tempfile.TemporaryDirectory() as scratch:
        rules = host_policy([], Path(scratch))
        environment = {**host_environment(Path(scratch)), "OMP_NUM_THREADS": "1"}
        runs: dict[str, list[dict[str, float]]] = {"plain": [], "sandboxed": []}
        for _ in range(args.rounds):
            for label in ("plain", "sandboxed"):
                runs[label].append(child(label == "sandboxed", rules, environment, scratch))
    print(f"{'figure':<18} {'plain':>10} {'sandboxed':>10}   (median of {args.rounds} child processes)")
    for figure in ("syscall_ns", "send_recv_us", "mlp_forward_us", "apply_ms"):
        cells = []
        for label in ("plain", "sandboxed"):
            values = [run[figure] for run in runs[label] if figure in run]
            cells.append(f"{statistics.median(values):10.2f}" if values else f"{'-':>10}")
        print(f"{figure:<18} {cells[0]} {cells[1]}")
    starts, imports = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        host = host_start("task", [])
        starts.append(time.perf_counter() - started)
        host.stop()
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import django, torch, transformers, redis, msgpack"], check=True,
                       env=environment)  # fmt: skip
        imports.append(time.perf_counter() - started)
    print(f"task host start: {statistics.median(starts):.2f} s (sandboxed, Django configured, ready to load)")
    print(f"plain interpreter importing django, torch, transformers: {statistics.median(imports):.2f} s")


if __name__ == "__main__":
    main()
