"""Serving benchmark: the portal's OIP v2 prediction path against in-process references.

In one run, for each model (mlp: FP32 [N, 64]; cnn: FP32 [N, 3, 64, 64]), every request
carrying one example, with wrk at 1 and 32 connections:

(a) the in-process torch limit: forward of batch 1 (req/s = 1/t) and of batch 32 (items/s),
    one torch thread;
(b) a plain Django view running the model in-process (bench/reference_django.py),
(c) a minimal raw ASGI app doing the same (bench/reference_asgi.py),
    both under `uvicorn --workers 2` like the portal;
and the portal (uvicorn 2 workers serving portal.asgi + one Celery worker process running
the serving loop) with JSON and binary tensors, on the embedded default (SQLite + embedded
Redis) and on PostgreSQL + Redis (a database and a redis-server of the run's own, dropped and
stopped at the end: nothing shared is touched). Every process runs one torch thread (OMP_NUM_THREADS=1,
MKL_NUM_THREADS=1; the references also call torch.set_num_threads(1)). Each server answers
one request per model first, compared with an in-process forward (atol 1e-4).

Run from the repository root (about 5-7 minutes at --duration 8)::

    .venv/bin/python bench/serving.py [--duration 10] [--only mlp,cnn] [--backends embedded,postgres]
                                      [--skip-references] [--skip-fault] [--profile] [--keep]

After the MLP loads of each backend, one serving process is SIGKILLed under a c=32 load
(the portal runs with INFERENCE_TIMEOUT_SECONDS=5 here): the requests it held must fail
within that timeout with a clear error, none may hang, and throughput must come back once
Celery has replaced the process.

`--profile` samples one gateway process and the worker process with py-spy during an extra
(unmeasured) MLP c=32 JSON load and prints the functions with the most own time.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LUA = ROOT / "bench" / "wrk" / "infer.lua"
CONCURRENCY = (1, 32)
BACKENDS = ("embedded", "postgres")
MODELS = ("mlp", "cnn")
ITEM_SHAPES: dict[str, tuple[int, ...]] = {"mlp": (64,), "cnn": (3, 64, 64)}
INPUT_NAMES = {"mlp": "x", "cnn": "image"}
# The PostgreSQL backend runs on a database this run creates (and drops) under a name of its
# own, and on a redis-server it starts on a free port: nothing shared is dropped or flushed.
PG_DATABASE = f"maas_bench_{secrets.token_hex(4)}"
PG_URL = f"postgres://postgres@127.0.0.1:5432/{PG_DATABASE}"
ATOL = 1e-4
WRK_TIMEOUT = "5s"
# The portal's INFERENCE_TIMEOUT_SECONDS here: short, so the worker-death phase is short too.
FAULT_TIMEOUT_SECONDS = 5
FAULT_LOAD_SECONDS = 10
FAULT_KILL_AFTER_SECONDS = 2.0
# Environment the portal reads; cleared so that the shell running the benchmark cannot leak
# another configuration into the servers.
PORTAL_ENV = (
    "DATABASE_", "CELERY_", "INFERENCE_", "SECRET_KEY", "ALLOWED_HOSTS", "SECURE_", "SESSION_COOKIE_",
    "CSRF_", "PORTAL_", "SQLITE_PATH", "ARTIFACT_", "DJANGO_", "DEBUG", "LOG_LEVEL", "MODEL_UPLOAD_",
    "FILE_UPLOAD_", "DATA_UPLOAD_", "DEMO_", "STATIC_ROOT", "BENCH_",
)  # fmt: skip
LOG_PROBLEM = re.compile(r"Traceback|\bERROR\b|CRITICAL|Exception|Error:")
LOG_WARNING = re.compile(r"\bWARNING\b|Warning:")
# The worker-death phase kills a pool process on purpose; Celery logging that is expected.
LOG_EXPECTED = re.compile(r"exited with 'signal 9 \(SIGKILL\)'")


# --- processes ------------------------------------------------------------------------------


@dataclass
class Server:
    """A process group we started, with its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path


class Processes:
    """Every server the benchmark starts; each in its own session so its whole group can be stopped."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[Server] = []
        self.finished: list[Server] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Server:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = Server(name, process, log)
        self.running.append(server)
        return server

    def stop(self, servers: list[Server] | None = None) -> None:
        """Stop each group in reverse start order (web before worker before broker): SIGTERM, wait, SIGKILL."""
        for server in list(reversed(self.running if servers is None else servers)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGTERM)
            try:
                server.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print(f"  {server.name} did not stop on SIGTERM within 15 s; killing it")
            # The leader may be gone while its children (uvicorn workers, pool processes) linger.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(timeout=5)
            self.running.remove(server)
            self.finished.append(server)


def children(pid: int) -> list[int]:
    """Direct children of a process (from /proc)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    """The environment of every server: no inherited portal settings, one torch thread."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(PORTAL_ENV)}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return env


def uvicorn_argv(app: str, port: int) -> list[str]:
    """The portal's web server configuration (as runportal starts it), for any ASGI app."""
    return [PYTHON, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
            "--lifespan", "off", "--no-access-log"]  # fmt: skip


# --- HTTP -----------------------------------------------------------------------------------


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def wait_until(check: Callable[[], bool], server: Server, what: str, timeout: float = 120) -> None:
    """Poll `check` until it is true; fail early if the server process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode} (log: {server.log})")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready within {timeout:.0f}s (log: {server.log})")


def output_of(headers: dict[str, str], body: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """The first output tensor of an OIP v2 response (JSON or binary) and the response parameters."""
    header_length = headers.get("inference-header-content-length")
    if header_length is None:
        document = json.loads(body)
        output = document["outputs"][0]
        array = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    else:
        start = int(header_length)
        document = json.loads(body[:start])
        output = document["outputs"][0]
        size = output["parameters"]["binary_data_size"]
        array = np.frombuffer(body[start : start + size], dtype="<f4").reshape(output["shape"])
    return array, document.get("parameters", {})


# --- requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """One request body written to disk for wrk, and what the correctness check sends."""

    path: Path
    content: bytes
    content_type: str
    header_length: int | None

    def headers(self, token: str | None) -> dict[str, str]:
        headers = {"Content-Type": self.content_type}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.header_length is not None:
            headers["Inference-Header-Content-Length"] = str(self.header_length)
        return headers


def json_body(model: str, example: np.ndarray, path: Path) -> Body:
    # tolist() gives Python floats, as tritonclient's JSON encoding does.
    document = {"inputs": [{"name": INPUT_NAMES[model], "shape": list(example.shape), "datatype": "FP32",
                            "data": example.reshape(-1).tolist()}]}  # fmt: skip
    content = json.dumps(document).encode()
    path.write_bytes(content)
    return Body(path, content, "application/json", None)


def binary_body(model: str, example: np.ndarray, output_name: str, path: Path) -> Body:
    raw = np.ascontiguousarray(example, dtype="<f4").tobytes()
    document = {
        "inputs": [{"name": INPUT_NAMES[model], "shape": list(example.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
    }  # fmt: skip
    header = json.dumps(document).encode()
    path.write_bytes(header + raw)
    return Body(path, header + raw, "application/octet-stream", len(header))


# --- wrk ------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """What wrk printed, parsed."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    max_ms: float = 0.0

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def error_text(self) -> str:
        parts = [f"non-2xx {self.non_2xx}"] if self.non_2xx else []
        parts += [f"{kind} {count}" for kind, count in self.socket_errors.items() if count]
        return ", ".join(parts)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _latency_ms(text: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {percentile}% latency in wrk output:\n{text}")
    return float(match[1]) * _UNITS_MS[match[2]]


def wrk_parse(text: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if rps is None or total is None:
        raise ValueError(f"unexpected wrk output:\n{text}")
    errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups()), strict=True)) if sockets else {}
    )
    latency = re.search(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m)", text, re.MULTILINE)
    return WrkResult(
        rps=float(rps[1]), p50_ms=_latency_ms(text, "50"), p99_ms=_latency_ms(text, "99"), requests=int(total[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0, socket_errors=errors,
        max_ms=float(latency[1]) * _UNITS_MS[latency[2]] if latency else 0.0,
    )  # fmt: skip


def wrk_command(
    port: int, model: str, body: Body, token: str | None, connections: int, seconds: float, timeout: str = WRK_TIMEOUT
) -> tuple[list[str], dict[str, str]]:
    """`wrk -t2 -cC -dD --latency` (one thread at c=1: wrk needs a connection per thread) and its environment."""
    env = os.environ | {
        "BENCH_BODY_FILE": str(body.path), "BENCH_CONTENT_TYPE": body.content_type, "BENCH_TOKEN": token or "",
        "BENCH_HEADER_LENGTH": "" if body.header_length is None else str(body.header_length),
    }  # fmt: skip
    # wrk takes whole seconds only.
    duration = f"-d{max(1, round(seconds))}s"
    argv = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", duration, "--timeout", timeout,
            "--latency", "-s", str(LUA), f"http://127.0.0.1:{port}/v2/models/{model}/infer"]  # fmt: skip
    return argv, env


def wrk_run(port: int, model: str, body: Body, token: str | None, connections: int, seconds: float) -> WrkResult:
    argv, env = wrk_command(port, model, body, token, connections, seconds)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return wrk_parse(done.stdout)


# --- in-process limits ----------------------------------------------------------------------


def forward_seconds(module: Any, batch: torch.Tensor, budget: float = 1.0) -> float:
    """Median time of one forward pass over blocks of calls lasting ~50 ms each."""
    with torch.inference_mode():
        for _ in range(20):
            module(batch)
        started = time.perf_counter()
        module(batch)
        calls = max(1, int(0.05 / max(time.perf_counter() - started, 1e-7)))
        samples: list[float] = []
        deadline = time.perf_counter() + budget
        while time.perf_counter() < deadline or len(samples) < 5:
            started = time.perf_counter()
            for _ in range(calls):
                module(batch)
            samples.append((time.perf_counter() - started) / calls)
    return statistics.median(samples)


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class Row:
    server: str
    connections: int
    result: WrkResult
    cpu_ms_per_request: float
    other_cores: float


def _jiffies_busy() -> int:
    """Busy CPU time of the whole machine so far (user, nice, system, irq, softirq, steal), in clock ticks."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return user + nice + system + irq + softirq + steal


def _jiffies_of_groups(groups: set[int]) -> int:
    """CPU time so far of every live process in the given process groups, in clock ticks."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after the parenthesised command name: state ppid pgrp ... utime(14) stime(15).
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) in groups:
                total += int(fields[11]) + int(fields[12])
    return total


@contextlib.contextmanager
def cpu_meter(groups: set[int]) -> Iterator[dict[str, float]]:
    """CPU seconds used by our servers (the process groups), by wrk, and by everything else on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = (_jiffies_busy(), _jiffies_of_groups(groups), usage.ru_utime + usage.ru_stime, time.monotonic())
    measured: dict[str, float] = {}
    yield measured
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = (_jiffies_busy() - before[0]) / tick
    servers = (_jiffies_of_groups(groups) - before[1]) / tick
    client = usage.ru_utime + usage.ru_stime - before[2]
    measured.update(servers=servers, client=client, other=max(0.0, busy - servers - client),
                    seconds=time.monotonic() - before[3])  # fmt: skip


@dataclass
class Fault:
    """A serving process SIGKILLed under load: before, during and after, and what a probe client saw."""

    before: WrkResult
    during: WrkResult
    after: WrkResult
    recovered_seconds: float | None
    first_error: str


@dataclass
class Bench:
    """State of one benchmark run: inputs, expected outputs, results and problems seen."""

    args: argparse.Namespace
    work: Path
    processes: Processes
    models: list[str]
    artifacts: dict[str, Path] = field(default_factory=dict)
    modules: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    json_bodies: dict[str, Body] = field(default_factory=dict)
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)
    rows: dict[str, list[Row]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    faults: dict[str, Fault] = field(default_factory=dict)
    profile_text: list[str] = field(default_factory=list)

    # -- preparation ---------------------------------------------------------------------
    def prepare(self) -> None:
        from portal import demo

        torch.set_num_threads(1)
        builders = {"mlp": demo.mlp, "cnn": demo.cnn}
        generator = np.random.default_rng(0)
        for model in self.models:
            path = demo.save_torchscript(builders[model](), self.work / f"{model}.pt")
            self.artifacts[model] = path
            # The servers run the TorchScript file; so do the limit and the expected outputs.
            module = torch.jit.load(str(path), map_location="cpu").eval()
            self.modules[model] = module
            example = generator.standard_normal((1, *ITEM_SHAPES[model]), dtype=np.float32)
            self.examples[model] = example
            with torch.inference_mode():
                self.expected[model] = module(torch.from_numpy(example)).numpy()
            self.json_bodies[model] = json_body(model, example, self.work / f"{model}-json.body")
            self.rows[model] = []

    def measure_limits(self) -> None:
        print("\n(a) in-process torch limit, 1 thread (the served TorchScript file, torch.inference_mode)")
        for model in self.models:
            module = self.modules[model]
            one = forward_seconds(module, torch.from_numpy(self.examples[model]))
            batch = torch.from_numpy(np.repeat(self.examples[model], 32, axis=0))
            per_item = forward_seconds(module, batch) / 32
            self.limits[model] = (one, per_item)
            print(f"  {model}: batch 1 {one * 1000:.4f} ms -> {1 / one:,.0f} req/s;"
                  f"  batch 32 {per_item * 1000:.4f} ms/item -> {1 / per_item:,.0f} items/s")  # fmt: skip

    # -- checking and loading ------------------------------------------------------------
    def check_answer(self, label: str, model: str, port: int, body: Body, token: str | None) -> None:
        """One request before the load: status 200 and outputs equal to the in-process forward."""
        status, headers, content = http_request(port, "POST", f"/v2/models/{model}/infer", body.content,
                                                body.headers(token))  # fmt: skip
        if status != 200:
            raise RuntimeError(f"{label} {model}: HTTP {status}: {content[:300]!r}")
        array, parameters = output_of(headers, content)
        expected = self.expected[model]
        if array.shape != expected.shape or not np.allclose(array, expected, atol=ATOL, rtol=0):
            difference = float(np.max(np.abs(array - expected))) if array.shape == expected.shape else float("nan")
            self.problems.append(f"{label} {model}: output differs from the in-process forward (max |d| {difference})")
            print(f"  CORRECTNESS FAIL {label} {model}: shape {array.shape}, max |diff| {difference}")
        else:
            extra = f", batch_size {parameters['batch_size']}" if "batch_size" in parameters else ""
            print(f"  correct: {label} {model} ({len(body.content):,} B request{extra})")

    def load(self, label: str, model: str, port: int, body: Body, token: str | None) -> None:
        """A short unmeasured warm-up, then the measured runs at each concurrency."""
        wrk_run(port, model, body, token, 32, max(1.0, self.args.duration / 4))
        groups = {server.process.pid for server in self.processes.running}
        for connections in CONCURRENCY:
            with cpu_meter(groups) as cpu:
                result = wrk_run(port, model, body, token, connections, self.args.duration)
            per_request = 1000 * cpu["servers"] / max(1, result.requests)
            other = cpu["other"] / cpu["seconds"]
            self.rows[model].append(Row(label, connections, result, per_request, other))
            errors = f"  errors: {result.error_text()}" if result.errors else ""
            print(f"  {label:<24} {model} c={connections:<2} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:7.2f} ms"
                  f"  p99 {result.p99_ms:7.2f} ms  server CPU {per_request:.2f} ms/req  others {other:.2f} cores"
                  f"{errors}")  # fmt: skip
            if result.errors:
                self.problems.append(f"{label} {model} c={connections}: {result.error_text()}")

    # -- references ----------------------------------------------------------------------
    def run_reference(self, label: str, app: str) -> None:
        print(f"\n{label}: uvicorn {app} --workers 2")
        port = free_port()
        env = base_env() | {"BENCH_MODELS": ",".join(f"{m}={self.artifacts[m]}" for m in self.models)}
        server = self.processes.start(app.split(":")[0].split(".")[-1], uvicorn_argv(app, port), env)
        try:
            wait_until(lambda: http_request(port, "GET", "/")[0] > 0, server, label)
            for model in self.models:
                self.check_answer(label, model, port, self.json_bodies[model], None)
            for model in self.models:
                self.load(label, model, port, self.json_bodies[model], None)
        finally:
            self.processes.stop([server])

    # -- the portal ----------------------------------------------------------------------
    def backend_env(self, backend: str) -> dict[str, str]:
        data = self.work / backend
        data.mkdir(exist_ok=True)
        env = base_env() | {"PORTAL_DATA_DIR": str(data), "INFERENCE_TIMEOUT_SECONDS": str(FAULT_TIMEOUT_SECONDS)}
        if backend == "postgres":
            env |= {
                "DATABASE_URL": PG_URL, "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
                "SECRET_KEY": secrets.token_urlsafe(40)[:50], "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "SECURE_SSL_REDIRECT": "false",
            }  # fmt: skip
        return env

    def run_portal(self, backend: str, profile: bool) -> None:
        print(f"\nportal, {backend} backend: uvicorn portal.asgi:application --workers 2 + a celery worker")
        env = self.backend_env(backend)
        started: list[Server] = []
        try:
            if backend == "embedded":
                started.append(self._embedded_redis(env))
            else:
                started.append(self._private_redis(env))
                _postgres_create()
            setup = subprocess.run(
                [PYTHON, str(ROOT / "bench" / "portal_setup.py"), *(f"{m}={self.artifacts[m]}" for m in self.models)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            (self.work / "logs" / f"setup-{backend}.log").write_text(setup.stdout + setup.stderr)
            if setup.returncode != 0:
                raise RuntimeError(f"portal setup failed ({backend}):\n{setup.stderr[-3000:]}")
            info = json.loads(setup.stdout.strip().splitlines()[-1])
            token = info["token"]
            for model in self.models:
                details = info["models"][model]
                print(f"  registered {model} v{details['version']}: batching {details['batching']}, max_batch_size "
                      f"{details['max_batch_size']}, max_batch_delay_ms {details['max_batch_delay_ms']}")  # fmt: skip
            port = free_port()
            web = self.processes.start(f"web-{backend}", uvicorn_argv("portal.asgi:application", port), env)
            started.append(web)
            wait_until(lambda: http_request(port, "GET", "/v2/health/live")[0] == 200, web, "portal web server")
            auth = {"Authorization": f"Bearer {token}"}
            for model in self.models:
                # A worker per model: a compute-bound model gets one serving process per core
                # (as the references compute in two processes), a tiny one leaves the cores
                # to the gateway. `--worker-concurrency` sets it.
                concurrency = self.args.worker_concurrency.get(model, 1)
                print(f"  {model}: celery worker --concurrency {concurrency}")
                worker = self.processes.start(
                    f"worker-{backend}-{model}",
                    [PYTHON, "-m", "celery", "-A", "portal", "worker", "--queues", "default,inference", "--concurrency",
                     str(concurrency), "--loglevel", "INFO", "--hostname", f"bench-{backend}-{model}@%h"],
                    env,
                )  # fmt: skip
                try:
                    wait_until(lambda m=model: http_request(port, "GET", f"/v2/models/{m}/ready", None, auth)[0] == 200,
                               worker, f"worker serving {model}")  # fmt: skip
                    output = info["models"][model]["signature"]["outputs"][0]["name"]
                    binary = binary_body(model, self.examples[model], output, self.work / f"{model}-binary.body")
                    bodies = {"JSON": self.json_bodies[model], "binary": binary}
                    for encoding, body in bodies.items():
                        self.check_answer(f"portal {backend} {encoding}", model, port, body, token)
                    for encoding, body in bodies.items():
                        self.load(f"portal {backend} {encoding}", model, port, body, token)
                    if profile and model == "mlp":
                        self.profile(backend, port, web, worker, bodies["JSON"], token)
                    if model == "mlp" and not self.args.skip_fault:
                        self.fault(backend, model, port, worker, bodies["JSON"], token)
                finally:
                    self.processes.stop([worker])
        finally:
            self.processes.stop(started)

    def fault(self, backend: str, model: str, port: int, worker: Server, body: Body, token: str) -> None:
        """SIGKILL the serving process under load: in-flight requests must fail within the timeout, then recover."""
        print(f"  worker killed under load: {model} JSON c=32, SIGKILL of a serving process "
              f"{FAULT_KILL_AFTER_SECONDS:g} s into {FAULT_LOAD_SECONDS} s (INFERENCE_TIMEOUT_SECONDS="
              f"{FAULT_TIMEOUT_SECONDS})")  # fmt: skip
        before = wrk_run(port, model, body, token, 32, 4)
        (victim, *_) = children(worker.process.pid)
        wrk_timeout = f"{3 * FAULT_TIMEOUT_SECONDS}s"  # longer than the portal's: a hang would show as a timeout
        argv, env = wrk_command(port, model, body, token, 32, FAULT_LOAD_SECONDS, timeout=wrk_timeout)
        load = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen: dict[str, Any] = {}
        stop = threading.Event()

        def probe() -> None:
            # One more client beside wrk: keeps the first error it gets and when a new process answers.
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status, headers, content = http_request(port, "POST", f"/v2/models/{model}/infer", body.content,
                                                            body.headers(token))  # fmt: skip
                except (OSError, http.client.HTTPException) as exc:
                    seen.setdefault("error", f"connection failed: {exc}")
                    continue
                if status != 200:
                    seen.setdefault("error", f"HTTP {status} after {time.monotonic() - started:.1f} s: "
                                             f"{content[:200].decode(errors='replace')}")  # fmt: skip
                elif "killed" in seen and "recovered" not in seen:
                    answered_by = output_of(headers, content)[1].get("worker", "")
                    if not answered_by.endswith(f":{victim}"):
                        seen["recovered"] = time.monotonic() - seen["killed"]

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        time.sleep(FAULT_KILL_AFTER_SECONDS)
        os.kill(victim, signal.SIGKILL)
        seen["killed"] = time.monotonic()
        out, err = load.communicate(timeout=FAULT_LOAD_SECONDS + 60)
        stop.set()
        prober.join(timeout=3 * FAULT_TIMEOUT_SECONDS)
        if load.returncode != 0:
            raise RuntimeError(f"wrk failed ({load.returncode}): {err or out}")
        during = wrk_parse(out)
        after = wrk_run(port, model, body, token, 32, 4)
        fault = Fault(before, during, after, seen.get("recovered"), seen.get("error", "none seen by the probe"))
        self.faults[backend] = fault
        recovered = f"{fault.recovered_seconds:.1f} s" if fault.recovered_seconds is not None else "not seen"
        print(f"    before {before.rps:,.0f} req/s; during {during.rps:,.0f} req/s, {during.non_2xx} non-2xx, "
              f"socket errors {sum(during.socket_errors.values())}, max latency {during.max_ms:,.0f} ms; "
              f"a new process answered {recovered} after the kill; after {after.rps:,.0f} req/s")  # fmt: skip
        print(f"    first error the probe got: {fault.first_error}")

    def _embedded_redis(self, env: dict[str, str]) -> Server:
        """The portal's embedded Redis (core.embedded, as runportal starts it) in its own process group."""
        socket_path = Path(env["PORTAL_DATA_DIR"]) / "redis.sock"
        code = ("import sys; from pathlib import Path; from core.embedded import embedded_redis_start; "
                "process = embedded_redis_start(Path(sys.argv[1])); process.wait()")  # fmt: skip
        server = self.processes.start("embedded-redis", [PYTHON, "-c", code, str(socket_path)], env)

        def alive() -> bool:
            import redis

            return socket_path.exists() and bool(redis.Redis(unix_socket_path=str(socket_path)).ping())

        wait_until(alive, server, "embedded Redis", timeout=30)
        return server

    def _private_redis(self, env: dict[str, str]) -> Server:
        """A redis-server of this run's own (the machine's binary, as its service runs) on the port in env."""
        url = env["CELERY_BROKER_URL"]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        binary = shutil.which("redis-server")
        if binary is None:
            from core.embedded import redis_server_binary

            binary = str(redis_server_binary())
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.work)]  # fmt: skip
        server = self.processes.start("redis", argv, env)

        def alive() -> bool:
            import redis

            return bool(redis.Redis(port=port, socket_timeout=1).ping())

        wait_until(alive, server, "redis-server", timeout=30)
        return server

    # -- profiling -----------------------------------------------------------------------
    def profile(self, backend: str, port: int, web: Server, worker: Server, body: Body, token: str) -> None:
        """py-spy on one gateway process and the serving worker process during an MLP c=32 JSON load."""
        print(f"\n  profiling (py-spy, 10 s) during an extra, unmeasured MLP c=32 JSON load on {backend}")
        spy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
        if spy is None:
            self.profile_text.append("py-spy is not installed: .venv/bin/pip install py-spy")
            return
        gateways = [pid for pid in children(web.process.pid) if "spawn_main" in cmdline(pid)]
        pool = children(worker.process.pid)
        targets = {"gateway (uvicorn worker)": gateways[:1], "worker (celery pool process)": pool[:1]}
        spies: dict[str, tuple[subprocess.Popen[str], Path, int]] = {}
        for label, pids in targets.items():
            if not pids:
                self.profile_text.append(f"{label}: process not found")
                continue
            output = self.work / f"profile-{len(spies)}.txt"
            argv = [spy, "record", "--pid", str(pids[0]), "--duration", "10", "--rate", "100", "--format", "raw",
                    "--function", "--threads", "--nonblocking", "--output", str(output)]  # fmt: skip
            spies[label] = (subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
                            output, pids[0])  # fmt: skip
        try:
            result = wrk_run(port, "mlp", body, token, 32, 12)
            self.profile_text.append(
                f"load while sampling (perturbed by py-spy): {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                f"p99 {result.p99_ms:.2f} ms, errors {result.errors}"
            )
        finally:
            for label, (process, output, pid) in spies.items():
                try:
                    log, _ = process.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    log, _ = process.communicate()
                if process.returncode != 0 or not output.exists():
                    self.profile_text.append(f"{label} pid {pid}: py-spy could not sample it "
                                             f"(exit {process.returncode}): {log.strip()[-400:]}")  # fmt: skip
                    continue
                self.profile_text += profile_summary(label, pid, output.read_text(), seconds=10, rate=100)

    # -- report --------------------------------------------------------------------------
    def report(self) -> None:
        for model in self.models:
            rows = self.rows[model]
            if not rows and model not in self.limits:
                continue
            reference = {row.connections: row.result.rps for row in rows if row.server.startswith("(c)")}
            shape = "[1, 64]" if model == "mlp" else "[1, 3, 64, 64]"
            print(f"\n{model.upper()} (FP32 {shape} per request; x(c) = req/s / reference (c) at the same c)")
            if model in self.limits:
                one, per_item = self.limits[model]
                print(f"  (a) in-process torch, 1 thread: batch 1 {1 / one:,.0f} req/s ({one * 1000:.4f} ms); "
                      f"batch 32 {1 / per_item:,.0f} items/s ({per_item * 1000:.4f} ms/item)")  # fmt: skip
            print(f"  {'server':<24} {'c':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'x(c)':>6}"
                  f"  {'cpu ms/req':>10} {'others':>6}")  # fmt: skip
            for row in rows:
                result = row.result
                ratio = f"{result.rps / reference[row.connections]:.2f}" if row.connections in reference else "n/a"
                print(f"  {row.server:<24} {row.connections:>3} {result.rps:>9,.0f} {result.p50_ms:>8.2f} "
                      f"{result.p99_ms:>8.2f} {result.errors:>7} {ratio:>6}  {row.cpu_ms_per_request:>10.2f} "
                      f"{row.other_cores:>6.2f}")  # fmt: skip
        print(
            "\ncpu ms/req: CPU time of the server's own processes (web, worker, embedded Redis; not the shared Redis"
            f" or PostgreSQL) per request.\nothers: cores (of {os.cpu_count()}) busy with processes outside this"
            " benchmark during the run: noise."
        )
        self.report_checks()
        if self.profile_text:
            print("\nProfile (py-spy, own time = samples whose innermost frame is the function; idle excluded)")
            for line in self.profile_text:
                print(f"  {line}")

    def _find(self, model: str, server: str, connections: int) -> WrkResult | None:
        return next((r.result for r in self.rows.get(model, []) if r.server == server and r.connections == connections),
                    None)  # fmt: skip

    def report_checks(self) -> None:
        print("\nTarget checks")
        for backend in self.args.backends:
            label = f"portal {backend}"
            mlp32, mlp1 = self._find("mlp", f"{label} JSON", 32), self._find("mlp", f"{label} JSON", 1)
            cnn_json, cnn_bin = self._find("cnn", f"{label} JSON", 32), self._find("cnn", f"{label} binary", 32)
            checks: list[tuple[str, bool | None, str]] = []
            checks.append((f"MLP c=1 p50 <= 2 ms (JSON) [{backend}]", mlp1.p50_ms <= 2 if mlp1 else None,
                           f"p50 {mlp1.p50_ms:.2f} ms" if mlp1 else "not measured"))  # fmt: skip
            # Ratios against both references: the raw ASGI app is the strict ceiling of Python
            # HTTP here; Starlette is the reference the targets were calibrated on.
            for reference, short in (("(c) raw ASGI", "raw ASGI"), ("(c') Starlette", "Starlette")):
                mlp_ref, cnn_ref = self._find("mlp", reference, 32), self._find("cnn", reference, 32)
                name = f"MLP c=32 JSON >= 0.6x {short}, no errors, p99 <= 30 ms [{backend}]"
                if mlp32 and mlp_ref:
                    ratio = mlp32.rps / mlp_ref.rps
                    checks.append((name, ratio >= 0.6 and mlp32.errors == 0 and mlp32.p99_ms <= 30,
                                   f"{ratio:.2f}x, {mlp32.errors} errors, p99 {mlp32.p99_ms:.2f} ms"))  # fmt: skip
                else:
                    checks.append((name, None, "not measured"))
                for encoding, result in (("JSON", cnn_json), ("binary", cnn_bin)):
                    name = f"CNN c=32 {encoding} >= 1.2x {short} [{backend}]"
                    if result and cnn_ref:
                        ratio = result.rps / cnn_ref.rps
                        checks.append((name, ratio >= 1.2, f"{ratio:.2f}x"))
                    else:
                        checks.append((name, None, "not measured"))
            if cnn_json and cnn_bin:
                ratio = cnn_bin.rps / cnn_json.rps
                checks.append((f"CNN c=32 binary >= 1.5x CNN c=32 JSON [{backend}]", ratio >= 1.5, f"{ratio:.2f}x"))
            else:
                checks.append((f"CNN c=32 binary >= 1.5x CNN c=32 JSON [{backend}]", None, "not measured"))
            fault = self.faults.get(backend)
            name = f"worker killed under load: fails within the timeout, none hangs, throughput recovers [{backend}]"
            if fault:
                limit_ms = (FAULT_TIMEOUT_SECONDS + 1) * 1000
                recovered = fault.after.rps >= 0.8 * fault.before.rps
                passed = fault.during.max_ms <= limit_ms and not sum(fault.during.socket_errors.values()) and recovered
                checks.append((name, passed, f"max latency {fault.during.max_ms:,.0f} ms (limit {limit_ms:,} ms), "
                               f"{fault.during.non_2xx} failed cleanly, after/before "
                               f"{fault.after.rps / fault.before.rps:.2f}"))  # fmt: skip
            else:
                checks.append((name, None, "not measured"))
            for name, passed, detail in checks:
                verdict = "n/a " if passed is None else ("PASS" if passed else "FAIL")
                print(f"  {verdict}  {name}: {detail}")

    def scan_logs(self) -> None:
        """Report tracebacks, errors and warnings in every server's log."""
        print("\nServer logs")
        logs = sorted({s.log for s in self.processes.finished} | set((self.work / "logs").glob("setup-*.log")))
        for log in logs:
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            problems = [line for line in lines if LOG_PROBLEM.search(line) and not LOG_EXPECTED.search(line)]
            warnings = [line for line in lines if LOG_WARNING.search(line) and line not in problems]
            if not problems and not warnings:
                print(f"  {log.name}: clean ({len(lines)} lines)")
                continue
            print(f"  {log.name}: {len(problems)} error/traceback lines, {len(warnings)} warning lines")
            for line in problems[:8] + warnings[:4]:
                print(f"    | {line[:200]}")
            if problems:
                self.problems.append(f"{log.name}: {len(problems)} error/traceback lines")


def _per_model(text: str) -> dict[str, int]:
    """`mlp=1,cnn=2` as {"mlp": 1, "cnn": 2}."""
    try:
        return {name: int(count) for name, count in (item.split("=") for item in text.split(",") if item)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected model=count pairs, got {text!r}") from None


def profile_summary(label: str, pid: int, raw: str, seconds: float, rate: int, top: int = 15) -> list[str]:
    """Busy share per thread, top functions by own time and own time per package, from py-spy's raw output.

    Recorded with --threads (the first frame names the thread) and without --idle, so only
    samples where a thread was running count; own time is where the innermost Python frame was.
    """
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames.pop(0) if frames[0].startswith("thread (") else "?"
        threads[re.sub(r"^thread \(\d+\):?\s*", "", thread) or thread] += int(count)
        if frames:
            leaf = _short_frame(frames[-1])
            own[leaf] += int(count)
            packages[_package(leaf)] += int(count)
    total = sum(threads.values())
    expected = seconds * rate
    share = 100 * total / expected
    lines = [f"{label} pid {pid}: {total} busy samples in {seconds:g} s at {rate} Hz (~{share:.0f}% of one core "
             "in Python-visible frames; C code counts to its caller)"]  # fmt: skip
    if not total:
        return lines
    busiest = threads.most_common(5)
    lines.append("  busy by thread: " + ", ".join(f"{name} {100 * n / expected:.0f}%" for name, n in busiest))
    lines.append("  own time by package: " + ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in
                                                      packages.most_common(10)))  # fmt: skip
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    return lines


def _short_frame(frame: str) -> str:
    frame = frame.replace(str(ROOT) + "/", "")
    return re.sub(r"\S*/site-packages/", "", re.sub(r"\S*/lib/python3\.\d+/", "stdlib/", frame))


def _package(frame: str) -> str:
    match = re.search(r"\(([^:)]+)", frame)
    if match is None:
        return "?"
    parts = match[1].split("/")
    if parts[0] == "stdlib" and len(parts) > 1:
        return "stdlib:" + parts[1].removesuffix(".py")
    return parts[0].removesuffix(".py")


_created_database = False


def _postgres_create() -> None:
    """The benchmark's database: a new one, named for this run (CREATE fails rather than reuse a name)."""
    global _created_database
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c"]
    subprocess.run([*psql, f"CREATE DATABASE {PG_DATABASE}"], check=True, capture_output=True)
    _created_database = True


def _postgres_drop() -> None:
    """Drop the database this run created (and only that one)."""
    if not _created_database:
        return
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c"]
    subprocess.run([*psql, f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)"], check=False, capture_output=True)


@contextlib.contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP end the run the same way, so the cleanup always runs.

    SIGINT is set explicitly: a shell starts background jobs with it ignored.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--only", default=",".join(MODELS), help="models: mlp,cnn")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="portal backends: embedded,postgres")
    parser.add_argument("--worker-concurrency", type=_per_model, default=_per_model("mlp=1,cnn=2"),
                        help="worker processes (each with a serving loop) per model; default mlp=1,cnn=2")  # fmt: skip
    parser.add_argument("--skip-references", action="store_true", help="skip references (b) and (c)")
    parser.add_argument("--skip-fault", action="store_true", help="skip killing a worker under load")
    parser.add_argument("--profile", action="store_true", help="py-spy a gateway and the worker under MLP c=32 JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, bodies, profiles)")
    args = parser.parse_args(argv)
    args.models = [m for m in args.only.split(",") if m]
    args.backends = [b for b in args.backends.split(",") if b]
    for value, allowed in ((args.models, MODELS), (args.backends, BACKENDS)):
        unknown = set(value) - set(allowed)
        if unknown:
            parser.error(f"unknown {', '.join(sorted(unknown))}; choose from {', '.join(allowed)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)")
        return 2
    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="maas-bench-"))
    (work / "logs").mkdir()
    bench = Bench(args, work, Processes(work / "logs"), args.models)
    load = os.getloadavg()
    print(f"serving benchmark: models {', '.join(args.models)}; backends {', '.join(args.backends)}; "
          f"{args.duration:g} s per run; {os.cpu_count()} cores; load average {load[0]:.2f} {load[1]:.2f}; "
          f"torch {torch.__version__}; work dir {work}")  # fmt: skip
    status = 0
    try:
        with interrupts_as_keyboard():
            bench.prepare()
            bench.measure_limits()
            if not args.skip_references:
                bench.run_reference("(b) Django view", "bench.reference_django:application")
                bench.run_reference("(c) raw ASGI", "bench.reference_asgi:application")
                bench.run_reference("(c') Starlette", "bench.reference_starlette:application")
            for index, backend in enumerate(args.backends):
                bench.run_portal(backend, profile=args.profile and index == 0 and "mlp" in args.models)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers")
        status = 130
    except Exception as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}")
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        bench.processes.stop()
        if "postgres" in args.backends:
            _postgres_drop()
        bench.report()
        bench.scan_logs()
        if bench.problems:
            print("\nProblems seen")
            for problem in bench.problems:
                print(f"  - {problem}")
        if args.keep:
            print(f"\nwork directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return status


if __name__ == "__main__":
    sys.exit(main())
