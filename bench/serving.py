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
stopped at the end: nothing shared is touched), and in the production layout the README
documents (PostgreSQL + Redis, `uvicorn --workers 4`, a control-plane worker on the default
queue and the serving worker on the inference queue only). Every process runs one torch thread (OMP_NUM_THREADS=1,
MKL_NUM_THREADS=1; the references also call torch.set_num_threads(1)). Each server answers
one request per model first, compared with an in-process forward (atol 1e-4).

Run from the repository root (about 5-7 minutes at --duration 8)::

    .venv/bin/python bench/serving.py [--duration 10] [--only mlp,cnn] [--backends embedded,postgres,production]
                                      [--skip-references] [--skip-fault] [--profile] [--keep]

After the MLP loads of each backend, one serving process is SIGKILLed under a c=32 load
(the portal runs with INFERENCE_TIMEOUT_SECONDS=5 here): the requests it held must fail
within that timeout with a clear error, none may hang, and throughput must come back once
Celery has replaced the process.

Overload (after each backend's loads; `--skip-overload` leaves it out, `--overload-only` runs
nothing else on the portal): on the last model of the run (cnn by default: the slow one), the
capacity of a path is measured (3 s, 32 closed-loop clients), then requests arrive at twice
that rate for `--overload-seconds` (open loop), first on /v2 (JSON), then on the friendly
/api/v1/models/{name}/predict/ endpoint (with a token, so answered in the gateway's event
loop: inference.api.predict_asgi). Reported per load: the fraction answered 503 and their
latency (target: within 100 ms, each with a Retry-After), the admitted requests'
latency against INFERENCE_TIMEOUT_SECONDS, the 500s (target: none) and, on PostgreSQL, the
connections the database held to the run's database (sampled every 100 ms; bounded per web
process by WEB_MAX_CONCURRENT_REQUESTS plus its gateway threads, see portal/concurrency.py).

`--profile` samples one gateway process and the worker process with py-spy during an extra
(unmeasured) MLP c=32 JSON load and prints the functions with the most own time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import (
    FAULT_TIMEOUT_SECONDS,
    INPUT_NAMES,
    PYTHON,
    ROOT,
    Body,
    Processes,
    Server,
    base_env,
    binary_body,
    children,
    cmdline,
    cpu_meter,
    embedded_redis,
    forward_seconds,
    free_port,
    http_request,
    interrupts_as_keyboard,
    json_body,
    output_of,
    profile_summary,
    uvicorn_argv,
    wait_until,
    worker_argv,
    wrk_command,
    wrk_parse,
    wrk_run,
)
from overload import Overload, capacity, run_overload
from report import BenchReport, Fault, Row

CONCURRENCY = (1, 32)
BACKENDS = ("embedded", "postgres", "production")
# The layout README's "Production deployment" documents, on PostgreSQL + Redis: 4 web processes,
# a control-plane worker on the default queue (-c 4) and the serving worker on inference only.
PRODUCTION_WEB_WORKERS = 4
PRODUCTION_CONTROL_CONCURRENCY = 4
MODELS = ("mlp", "cnn")
ITEM_SHAPES: dict[str, tuple[int, ...]] = {"mlp": (64,), "cnn": (3, 64, 64)}
# The PostgreSQL backend runs on a database this run creates (and drops) under a name of its
# own, and on a redis-server it starts on a free port: nothing shared is dropped or flushed.
PG_DATABASE = f"maas_bench_{secrets.token_hex(4)}"
ATOL = 1e-4
FAULT_LOAD_SECONDS = 10
FAULT_KILL_AFTER_SECONDS = 2.0


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class Bench(BenchReport):
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
    overloads: list[tuple[str, Overload]] = field(default_factory=list)

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
        if self.args.overload_queued:
            env["INFERENCE_MAX_QUEUED"] = str(self.args.overload_queued)
        if backend in ("postgres", "production"):
            env |= {
                "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{_database(backend)}", "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
                "SECRET_KEY": secrets.token_urlsafe(40)[:50], "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "SECURE_SSL_REDIRECT": "false",
            }  # fmt: skip
        return env

    def run_portal(self, backend: str, profile: bool) -> None:
        production = backend == "production"
        web_workers = PRODUCTION_WEB_WORKERS if production else 2
        if production:
            print(f"\nportal, production layout (PostgreSQL + Redis): uvicorn --workers {web_workers}, "
                  f"celery -Q default -c {PRODUCTION_CONTROL_CONCURRENCY}, celery -Q inference per model")  # fmt: skip
        else:
            print(f"\nportal, {backend} backend: uvicorn portal.asgi:application --workers 2 + a celery worker")
        env = self.backend_env(backend)
        started: list[Server] = []
        try:
            if backend == "embedded":
                started.append(embedded_redis(self.processes, env))
            else:
                started.append(self._private_redis(env))
                _postgres_create(_database(backend))
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
            web = self.processes.start(
                f"web-{backend}", uvicorn_argv("portal.asgi:application", port, workers=web_workers), env
            )
            started.append(web)
            wait_until(lambda: http_request(port, "GET", "/v2/health/live")[0] == 200, web, "portal web server")
            if production:
                control = worker_argv(PRODUCTION_CONTROL_CONCURRENCY, queues="default", hostname="bench-control@%h")
                started.append(self.processes.start("worker-production-control", control, env))
            auth = {"Authorization": f"Bearer {token}"}
            for model in self.models:
                # A worker per model: a compute-bound model gets one serving process per core
                # (as the references compute in two processes), a tiny one leaves the cores
                # to the gateway. `--worker-concurrency` sets it.
                concurrency = self.args.worker_concurrency.get(model, 1)
                print(f"  {model}: celery worker --concurrency {concurrency}")
                queues = "inference" if production else "default,inference"
                argv = worker_argv(concurrency, queues=queues, hostname=f"bench-{backend}-{model}@%h")
                worker = self.processes.start(f"worker-{backend}-{model}", argv, env)
                try:
                    wait_until(lambda m=model: http_request(port, "GET", f"/v2/models/{m}/ready", None, auth)[0] == 200,
                               worker, f"worker serving {model}")  # fmt: skip
                    output = info["models"][model]["signature"]["outputs"][0]["name"]
                    binary = binary_body(model, self.examples[model], output, self.work / f"{model}-binary.body")
                    bodies = {"JSON": self.json_bodies[model], "binary": binary}
                    for encoding, body in bodies.items():
                        self.check_answer(f"portal {backend} {encoding}", model, port, body, token)
                    if not self.args.overload_only:
                        for encoding, body in bodies.items():
                            self.load(f"portal {backend} {encoding}", model, port, body, token)
                        if profile and model == "mlp":
                            self.profile(backend, port, web, worker, bodies["JSON"], token)
                        if model == "mlp" and not self.args.skip_fault and not production:
                            self.fault(backend, model, port, worker, bodies["JSON"], token)
                    if model == self.models[-1] and not self.args.skip_overload:
                        self.overload(backend, model, port, token)
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
        # The serving identities that answered before the kill: the killed process's model host
        # (the identity a reply names) dies with it, so a new identity is the replacement.
        served_before: set[str] = set()
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
                else:
                    answered_by = output_of(headers, content)[1].get("worker", "")
                    if "killed" not in seen:
                        served_before.add(answered_by)
                    elif "recovered" not in seen and answered_by not in served_before:
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

    def overload(self, backend: str, model: str, port: int, token: str) -> None:
        """Twice the measured capacity, open loop, on /v2 and on the friendly endpoint (see the module's docstring)."""
        database = _database(backend) if backend != "embedded" else None
        example = self.examples[model][0].tolist()
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        friendly = json.dumps({"inputs": {INPUT_NAMES[model]: example}}).encode()
        loads = [
            (f"/v2 {model} JSON", f"/v2/models/{model}/infer", self.json_bodies[model].content),
            (f"friendly {model}", f"/api/v1/models/{model}/predict/", friendly),
        ]
        print(f"  overload: {model}, twice the capacity measured at c=32, {self.args.overload_seconds:g} s "
              f"(INFERENCE_TIMEOUT_SECONDS={FAULT_TIMEOUT_SECONDS})")  # fmt: skip
        for label, path, body in loads:
            sustained = capacity(port, path, body, auth, 32, 3)
            rate = self.args.overload_rate or 2 * sustained
            result = run_overload(f"portal {backend} {label}", port, path, body, auth, rate,
                                  self.args.overload_seconds, database)  # fmt: skip
            self.overloads.append((backend, result))
            print(f"    capacity {sustained:,.0f} req/s; {result.summary(FAULT_TIMEOUT_SECONDS)}")
            counts = result.statuses()
            refused = sorted(result.latencies_ms(503))
            if counts[500]:
                self.problems.append(f"overload {backend} {label}: {counts[500]} answers were 500")
            if refused and refused[int(0.99 * (len(refused) - 1))] > 100:
                self.problems.append(f"overload {backend} {label}: p99 of the 503s over 100 ms")
            admitted = result.latencies_ms(200)
            if any(ms > FAULT_TIMEOUT_SECONDS * 1000 + 500 for ms in admitted):
                self.problems.append(f"overload {backend} {label}: admitted requests past their deadline")

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


def _per_model(text: str) -> dict[str, int]:
    """`mlp=1,cnn=2` as {"mlp": 1, "cnn": 2}."""
    try:
        return {name: int(count) for name, count in (item.split("=") for item in text.split(",") if item)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected model=count pairs, got {text!r}") from None


_created_databases: list[str] = []


def _database(backend: str) -> str:
    """The run's own PostgreSQL database for a backend (each backend starts from an empty one)."""
    return f"{PG_DATABASE}_{backend}"


def _postgres_create(name: str) -> None:
    """A new database, named for this run (CREATE fails rather than reuse a name)."""
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c"]
    subprocess.run([*psql, f"CREATE DATABASE {name}"], check=True, capture_output=True)
    _created_databases.append(name)


def _postgres_drop() -> None:
    """Drop the databases this run created (and only those)."""
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c"]
    for name in _created_databases:
        subprocess.run([*psql, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False, capture_output=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--only", default=",".join(MODELS), help="models: mlp,cnn")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="portal backends: embedded,postgres,production")
    parser.add_argument("--worker-concurrency", type=_per_model, default=_per_model("mlp=1,cnn=2"),
                        help="worker processes (each with a serving loop) per model; default mlp=1,cnn=2")  # fmt: skip
    parser.add_argument("--skip-references", action="store_true", help="skip references (b) and (c)")
    parser.add_argument("--skip-fault", action="store_true", help="skip killing a worker under load")
    parser.add_argument("--skip-overload", action="store_true", help="skip the overload phase")
    parser.add_argument("--overload-only", action="store_true", help="on the portal, run only the overload phase")
    parser.add_argument("--overload-seconds", type=float, default=10, help="seconds per overload load (default 10)")
    parser.add_argument("--overload-queued", type=int, default=0,
                        help="INFERENCE_MAX_QUEUED for the portal (default: the portal's own)")  # fmt: skip
    parser.add_argument("--overload-rate", type=float, default=0,
                        help="requests/s of the overload phase (default: twice the capacity measured)")  # fmt: skip
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
