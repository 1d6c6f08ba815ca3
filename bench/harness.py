"""The serving benchmark's tools: the processes it starts, HTTP checks, request bodies,
wrk runs and their parsing, in-process forward timing, CPU meters and py-spy summaries."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
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
INPUT_NAMES = {"mlp": "x", "cnn": "image"}
# The portal's INFERENCE_TIMEOUT_SECONDS here: short, so the worker-death phase is short too.
FAULT_TIMEOUT_SECONDS = 5
WRK_TIMEOUT = "5s"
# Environment the portal reads; cleared so that the shell running the benchmark cannot leak
# another configuration into the servers.
PORTAL_ENV = (
    "DATABASE_", "CELERY_", "INFERENCE_", "SECRET_KEY", "ALLOWED_HOSTS", "SECURE_", "SESSION_COOKIE_",
    "CSRF_", "PORTAL_", "SQLITE_PATH", "ARTIFACT_", "DJANGO_", "DEBUG", "LOG_LEVEL", "MODEL_UPLOAD_",
    "FILE_UPLOAD_", "DATA_UPLOAD_", "DEMO_", "STATIC_ROOT", "BENCH_",
)  # fmt: skip


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


def embedded_redis(processes: Processes, env: dict[str, str]) -> Server:
    """The portal's embedded Redis (core.embedded, as runportal starts it) in its own process group."""
    socket_path = Path(env["PORTAL_DATA_DIR"]) / "redis.sock"
    code = ("import sys; from pathlib import Path; from core.embedded import embedded_redis_start; "
            "process = embedded_redis_start(Path(sys.argv[1])); process.wait()")  # fmt: skip
    server = processes.start("embedded-redis", [PYTHON, "-c", code, str(socket_path)], env)

    def alive() -> bool:
        import redis

        return socket_path.exists() and bool(redis.Redis(unix_socket_path=str(socket_path)).ping())

    wait_until(alive, server, "embedded Redis", timeout=30)
    return server


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


def uvicorn_argv(app: str, port: int, *, workers: int = 2) -> list[str]:
    """The portal's web server configuration (as runportal starts it: 2 workers), for any ASGI app."""
    return [PYTHON, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--lifespan", "off", "--no-access-log"]  # fmt: skip


def worker_argv(
    concurrency: int, *, queues: str = "default,inference", log_level: str = "INFO", hostname: str | None = None
) -> list[str]:
    """A portal Celery worker; by default on both queues (control plane and predictions), as runportal starts it."""
    argv = [PYTHON, "-m", "celery", "-A", "portal", "worker", "--queues", queues,
            "--concurrency", str(concurrency), "--loglevel", log_level]  # fmt: skip
    return [*argv, "--hostname", hostname] if hostname else argv


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


def group_cpu_seconds(groups: set[int]) -> float:
    """CPU seconds so far of every live process in the given process groups."""
    return _jiffies_of_groups(groups) / os.sysconf("SC_CLK_TCK")


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
