"""gRPC benchmark: Open Inference Protocol v2 over gRPC against REST with binary tensors, in one run.

One portal (embedded default: SQLite + embedded Redis) serves both: `uvicorn portal.asgi:application
--workers 2` for REST and `manage.py grpcserve --processes 2` for gRPC, in front of the same
Celery worker (its serving loop). For each model (mlp: FP32 [1, 64]; cnn: FP32 [1, 3, 64, 64]),
each request carrying one example, at 1 and 32 concurrent clients:

- gRPC, raw client: bench/grpc_load.py's h2 client (HTTP/2 frames on a raw asyncio stream, a
  connection per client, the request prebuilt);
- REST binary, raw client: the same load generator's rest client (HTTP/1.1 on a raw asyncio
  stream, a keep-alive connection per client, the request prebuilt): the fair pair, both
  protocols paying the same kind of client;
- gRPC with grpc.aio as the client (what a Python gRPC application pays: ~2x the raw clients'
  CPU per call, taken from the servers' cores on a small machine);
- REST binary with wrk, as bench/serving.py measures it (a C client: less CPU taken from the servers).

At c=32 the load generator runs as two processes of 16 clients (one core each at most, as
wrk runs two threads). Each server first answers one request whose outputs are compared with
an in-process forward (atol 1e-4). Reported: requests/s, p50/p99 latency, the CPU the portal's
processes spent per request (all of them; and the front alone: the gRPC or web server
processes), and the load generator's CPU per request.

    .venv/bin/python bench/grpc_serving.py [--duration 8] [--only mlp,cnn] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch
import tritonclient.grpc as grpcclient
from grpc_load import rest_request
from harness import (
    INPUT_NAMES,
    PYTHON,
    ROOT,
    Body,
    Processes,
    Server,
    base_env,
    binary_body,
    children,
    cpu_meter,
    embedded_redis,
    free_port,
    group_cpu_seconds,
    http_request,
    output_of,
    profile_summary,
    uvicorn_argv,
    wait_until,
    worker_argv,
    wrk_run,
)

MODELS = ("mlp", "cnn")
ITEM_SHAPES: dict[str, tuple[int, ...]] = {"mlp": (64,), "cnn": (3, 64, 64)}
WORKER_CONCURRENCY = {"mlp": 1, "cnn": 2}
CONCURRENCY = (1, 32)
ATOL = 1e-4


@dataclass
class Result:
    label: str
    model: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_ms: float
    front_cpu_ms: float
    client_cpu_ms: float


def loadgen(protocol: str, address: str, concurrency: int, seconds: float, request: Path, token: str) -> dict:
    """Run bench/grpc_load.py in one process (c <= 16) or two (c = 32) and merge what they measured."""
    processes = 2 if concurrency >= 32 else 1
    argv = [PYTHON, str(ROOT / "bench" / "grpc_load.py"), protocol, address, str(concurrency // processes),
            str(seconds), str(request), token]  # fmt: skip
    running = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(processes)]  # fmt: skip
    merged: dict = {"requests": 0, "errors": 0, "first_error": "", "seconds": 0.0, "latencies_ms": []}
    for process in running:
        out, err = process.communicate(timeout=seconds + 120)
        if process.returncode != 0:
            raise RuntimeError(f"load generator failed ({process.returncode}): {err[-2000:]}")
        part = json.loads(out.strip().splitlines()[-1])
        merged["requests"] += part["requests"]
        merged["errors"] += part["errors"]
        merged["first_error"] = merged["first_error"] or part["first_error"]
        merged["seconds"] = max(merged["seconds"], part["seconds"])
        merged["latencies_ms"] += part["latencies_ms"]
    return merged


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


class GrpcBench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.processes = Processes(work / "logs")
        self.results: list[Result] = []
        self.problems: list[str] = []
        self.fronts: dict[str, int] = {}  # the process group of each protocol's servers

    def run(self) -> None:
        from portal import demo

        torch.set_num_threads(1)
        builders = {"mlp": demo.mlp, "cnn": demo.cnn}
        rng = np.random.default_rng(0)
        artifacts, examples, expected = {}, {}, {}
        for model in self.args.models:
            path = demo.save_torchscript(builders[model](), self.work / f"{model}.pt")
            module = torch.jit.load(str(path), map_location="cpu").eval()
            artifacts[model] = path
            examples[model] = rng.standard_normal((1, *ITEM_SHAPES[model]), dtype=np.float32)
            with torch.inference_mode():
                expected[model] = module(torch.from_numpy(examples[model])).numpy()
        env = base_env() | {"PORTAL_DATA_DIR": str(self.work / "data"), "INFERENCE_TIMEOUT_SECONDS": "10"}
        (self.work / "data").mkdir()
        embedded_redis(self.processes, env)
        setup = subprocess.run(
            [PYTHON, str(ROOT / "bench" / "portal_setup.py"), *(f"{m}={artifacts[m]}" for m in self.args.models)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if setup.returncode != 0:
            raise RuntimeError(f"portal setup failed:\n{setup.stderr[-3000:]}")
        info = json.loads(setup.stdout.strip().splitlines()[-1])
        token = info["token"]
        port = free_port()
        address = f"127.0.0.1:{free_port()}"
        web = self.processes.start("web", uvicorn_argv("portal.asgi:application", port), env)
        rpc = self.processes.start(
            "grpc",
            [PYTHON, "manage.py", "grpcserve", "--bind", address, "--processes", str(self.args.grpc_processes)],
            env,
        )
        wait_until(lambda: http_request(port, "GET", "/v2/health/live")[0] == 200, web, "portal web server")
        wait_until(lambda: _grpc_live(address), rpc, "portal gRPC server")
        self.fronts = {"gRPC": rpc.process.pid, "REST": web.process.pid}
        auth = {"Authorization": f"Bearer {token}"}
        for model in self.args.models:
            concurrency = WORKER_CONCURRENCY[model]
            print(f"\n{model}: celery worker --concurrency {concurrency}")
            worker = self.processes.start(
                f"worker-{model}",
                worker_argv(concurrency, hostname=f"bench-grpc-{model}@%h"),
                env,
            )  # fmt: skip
            try:
                wait_until(lambda m=model: http_request(port, "GET", f"/v2/models/{m}/ready", None, auth)[0] == 200,
                           worker, f"worker serving {model}")  # fmt: skip
                output = info["models"][model]["signature"]["outputs"][0]["name"]
                self.measure(model, examples[model], expected[model], output, port, address, token)
                if self.args.profile and model == "mlp":
                    self.profile(rpc, address, token)
            finally:
                self.processes.stop([worker])

    def measure(self, model: str, example: np.ndarray, expected: np.ndarray, output: str, port: int,
                address: str, token: str) -> None:  # fmt: skip
        body = binary_body(model, example, output, self.work / f"{model}-binary.body")
        rest_file = self.work / f"{model}-rest.request"
        rest_file.write_bytes(rest_request(f"127.0.0.1:{port}", model, body.content, body.header_length or 0, token))
        grpc_file = self.work / f"{model}-grpc.request"
        grpc_file.write_bytes(grpc_request(model, example))
        self.check(model, example, expected, output, port, address, token, body)
        runs = [
            ("gRPC (raw client)", lambda c, s: loadgen("h2", address, c, s, grpc_file, token)),
            ("REST binary (raw client)", lambda c, s: loadgen("rest", f"127.0.0.1:{port}", c, s, rest_file, token)),
            ("gRPC (grpc.aio client)", lambda c, s: loadgen("grpc", address, c, s, grpc_file, token)),
        ]
        if shutil.which("wrk"):
            runs.append(("REST binary (wrk)", lambda c, s: _wrk(port, model, body, token, c, s)))
        for label, load in runs:
            load(32, max(1.0, self.args.duration / 4))  # warm-up, not measured
            for concurrency in CONCURRENCY:
                groups = {server.process.pid for server in self.processes.running}
                front = {self.fronts[label.split()[0]]}
                front_before = group_cpu_seconds(front)
                with cpu_meter(groups) as cpu:
                    measured = load(concurrency, self.args.duration)
                front_seconds = group_cpu_seconds(front) - front_before
                latencies = measured["latencies_ms"]
                rps = measured["requests"] / measured["seconds"]
                per_request = 1000 / max(1, measured["requests"])
                result = Result(label, model, concurrency, rps, percentile(latencies, 50), percentile(latencies, 99),
                                measured["errors"], per_request * cpu["servers"], per_request * front_seconds,
                                per_request * cpu["client"])  # fmt: skip
                self.results.append(result)
                errors = f"  errors {measured['errors']}: {measured['first_error']}" if measured["errors"] else ""
                print(f"  {label:<28} {model} c={concurrency:<2} {rps:>8,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                      f"p99 {result.p99_ms:7.2f} ms  CPU ms/req: portal {result.server_cpu_ms:.2f} "
                      f"(front {result.front_cpu_ms:.2f}), client {result.client_cpu_ms:.2f}{errors}")  # fmt: skip
                if measured["errors"]:
                    self.problems.append(f"{label} {model} c={concurrency}: {measured['errors']} errors")

    def profile(self, rpc: Server, address: str, token: str) -> None:
        """py-spy on one gRPC server process during an extra, unmeasured MLP c=32 gRPC load."""
        spy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
        servers = children(rpc.process.pid) or [rpc.process.pid]
        if spy is None or not servers:
            print("  profile: py-spy or the gRPC server process not found")
            return
        output = self.work / "profile-grpc.txt"
        argv = [spy, "record", "--pid", str(servers[0]), "--duration", "10", "--rate", "100", "--format", "raw",
                "--function", "--threads", "--nonblocking", "--output", str(output)]  # fmt: skip
        spying = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        loadgen("h2", address, self.args.profile_concurrency, 12, self.work / "mlp-grpc.request", token)
        log, _ = spying.communicate(timeout=60)
        if spying.returncode != 0 or not output.exists():
            print(f"  profile: py-spy failed: {log.strip()[-400:]}")
            return
        for line in profile_summary("gRPC server", servers[0], output.read_text(), seconds=10, rate=100, top=40):
            print(line)

    def check(self, model: str, example: np.ndarray, expected: np.ndarray, output: str, port: int, address: str,
              token: str, body: Body) -> None:  # fmt: skip
        """One answer per protocol, compared with the in-process forward."""
        status, headers, content = http_request(port, "POST", f"/v2/models/{model}/infer", body.content,
                                                body.headers(token))  # fmt: skip
        if status != 200:
            raise RuntimeError(f"REST {model}: HTTP {status}: {content[:300]!r}")
        answers = {"REST binary": output_of(headers, content)[0]}
        with grpcclient.InferenceServerClient(url=address) as client:
            tensor = grpcclient.InferInput(INPUT_NAMES[model], list(example.shape), "FP32")
            tensor.set_data_from_numpy(example)
            answers["gRPC"] = client.infer(model, [tensor], headers={"authorization": f"Bearer {token}"}).as_numpy(
                output
            )
        for label, array in answers.items():
            if array.shape != expected.shape or not np.allclose(array, expected, atol=ATOL, rtol=0):
                self.problems.append(f"{label} {model}: output differs from the in-process forward")
                print(f"  CORRECTNESS FAIL {label} {model}")
            else:
                print(f"  correct: {label} {model}")

    def report(self) -> None:
        print("\nSummary (req/s; p99 ms; portal CPU ms per request, front's, client's)")
        for model in self.args.models:
            for concurrency in CONCURRENCY:
                rows = [r for r in self.results if r.model == model and r.concurrency == concurrency]
                cells = "  |  ".join(f"{r.label}: {r.rps:,.0f} ({r.p99_ms:.1f}; {r.server_cpu_ms:.2f}, "
                                     f"{r.front_cpu_ms:.2f}, {r.client_cpu_ms:.2f})" for r in rows)  # fmt: skip
                print(f"  {model} c={concurrency}: {cells}")
            for concurrency in CONCURRENCY:
                runs = {r.label: r for r in self.results if r.model == model and r.concurrency == concurrency}
                rest = runs.get("REST binary (raw client)")
                if rest is None:
                    continue
                ratios = ", ".join(f"{r.label} {r.rps / rest.rps:.2f}x" for label, r in runs.items()
                                   if label.startswith("gRPC"))  # fmt: skip
                print(f"  {model} c={concurrency} gRPC vs REST binary (raw client): {ratios}")


def grpc_request(model: str, example: np.ndarray) -> bytes:
    """A serialized ModelInferRequest with the example as raw contents (as tritonclient.grpc sends it)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=INPUT_NAMES[model], datatype="FP32", shape=list(example.shape))
    request.raw_input_contents.append(np.ascontiguousarray(example, dtype="<f4").tobytes())
    return request.SerializeToString()


def _grpc_live(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            return channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=2) == b"\x08\x01"
    except grpc.RpcError:
        return False


def _wrk(port: int, model: str, body: Body, token: str, connections: int, seconds: float) -> dict:
    """wrk's figures in the load generator's shape (its latencies as the two percentiles it reports)."""
    result = wrk_run(port, model, body, token, connections, seconds)
    spread = [result.p50_ms] * 49 + [result.p99_ms] * 2  # percentile() of this gives p50 and ~p99
    return {"requests": result.requests, "errors": result.errors, "first_error": result.error_text(),
            "seconds": result.requests / max(result.rps, 1e-9), "latencies_ms": spread}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8, help="seconds per measured run (default 8)")
    parser.add_argument("--only", default=",".join(MODELS), help="models: mlp,cnn")
    parser.add_argument("--grpc-processes", type=int, default=2, help="gRPC server processes (default 2, as uvicorn)")
    parser.add_argument("--profile", action="store_true", help="py-spy a gRPC server under an MLP load")
    parser.add_argument("--profile-concurrency", type=int, default=32, help="clients of that load (default 32)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, requests)")
    args = parser.parse_args(argv)
    args.models = [m for m in args.only.split(",") if m]
    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="maas-bench-grpc-"))
    (work / "logs").mkdir()
    bench = GrpcBench(args, work)
    load = os.getloadavg()
    print(f"gRPC vs REST binary: models {', '.join(args.models)}; {args.duration:g} s per run; "
          f"load average {load[0]:.2f}; work dir {work}")  # fmt: skip
    status = 0
    started = time.monotonic()
    try:
        bench.run()
    except Exception as exc:
        print(f"\nbenchmark failed: {type(exc).__name__}: {exc}")
        status = 1
    finally:
        bench.processes.stop()
        bench.report()
        for problem in bench.problems:
            print(f"  problem: {problem}")
        print(f"({time.monotonic() - started:.0f} s)")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
