"""Benchmark uploading a large real model through the REST API.

For each web server (gunicorn portal.wsgi, uvicorn portal.asgi) this starts the portal on
a scratch SQLite database under /tmp/upbench, uploads a ~--size-mb MB model --repeat times
with curl (which streams the file), and reports the upload wall time, throughput and the
memory of the process that handles requests (RSS before, peak RSS sampled every 0.1 s,
and VmHWM after, reset before each upload through /proc/<pid>/clear_refs when the kernel
allows it). It then restarts the server with MODEL_UPLOAD_MAX_BYTES at half the file size
and reports how the over-limit upload is refused, with and without `Expect: 100-continue`:
status, time, and the bytes the server process wrote to disk (/proc/<pid>/io write_bytes).

--format picks the model: `torchscript` (default) a TorchScript Sequential of Linear layers
uploaded with its signature; `huggingface` a BertModel saved with `save_pretrained`
(safetensors weights, a WordPiece tokenizer trained locally) zipped (stored, not deflated)
into one archive and uploaded with `format=huggingface` and `task=feature-extraction`.
Either file is built once in a subprocess and cached under /tmp/upbench.

Units: MB = 10**6 bytes throughout.

Run from the repository root:

    .venv/bin/python bench/upload_large.py                      # 1024 MB, both servers, 2 uploads each
    .venv/bin/python bench/upload_large.py --size-mb 256 --servers uvicorn --repeat 1 --keep
    .venv/bin/python bench/upload_large.py --format huggingface --size-mb 128 --servers uvicorn --repeat 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
SCRATCH = Path("/tmp/upbench")
DATA_DIR = SCRATCH / "data"
LOG_DIR = SCRATCH / "logs"
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
BROKER_URL = "redis://127.0.0.1:6379/13"
MODEL_NAME = "big"
LAYER_BYTES = 4000 * 4000 * 4  # one Linear(4000, 4000) weight in float32: 64 MB
SIGNATURE = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4000]}]})
FORMATS = ("torchscript", "huggingface")
HF_TASK = "feature-extraction"
MB = 10**6

BUILD_MODEL = """
import sys, warnings
warnings.simplefilter("ignore")
import torch
layers, path = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
with torch.no_grad():
    model = torch.nn.Sequential(*[torch.nn.Linear(4000, 4000) for _ in range(layers)]).eval()
torch.jit.save(torch.jit.script(model), path)
"""

# A BertModel (hidden 1024, as BERT-large) whose vocabulary is widened until the fp32 weights
# reach the target size, saved by save_pretrained with a locally trained tokenizer, then
# zipped under one top-level folder as a user zips the directory. Run with cwd = the repository.
BUILD_HF = """
import os, shutil, sys, warnings, zipfile
from pathlib import Path
warnings.simplefilter("ignore")
os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
import torch
from transformers import BertConfig, BertModel
from transformers.utils import logging
logging.disable_progress_bar()
from portal.text_models import DEFAULT_CORPUS, pretrained_save, tokenizer_train
target, directory, path = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
hidden, heads = (1024, 16) if target >= 64 * 10**6 else (256, 4)
layers = max(1, min(24, target // (64 * 10**6)))
tokenizer = tokenizer_train(DEFAULT_CORPUS, max_length=512)
def config(vocab):
    return BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=hidden * 4, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
    )
def params(vocab):
    with torch.device("meta"):
        return sum(p.numel() for p in BertModel(config(vocab)).parameters())
base = params(1) - hidden
vocab = max(len(tokenizer), (target // 4 - base) // hidden)
torch.manual_seed(0)
model = BertModel(config(vocab)).eval()
shutil.rmtree(directory, ignore_errors=True)
pretrained_save(directory, model, tokenizer)
del model
with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    for file in sorted(directory.rglob("*")):
        if file.is_file():
            archive.write(file, f"{directory.name}/{file.relative_to(directory)}")
files = ", ".join(f"{f.name} {f.stat().st_size / 10**6:.1f} MB" for f in sorted(directory.iterdir()))
shutil.rmtree(directory)
print(f"model: BertModel {layers} layers, hidden {hidden}, vocab {vocab}, {base + vocab * hidden:,} params: {files}")
"""


# --- model file ------------------------------------------------------------------------------


def model_path(size_mb: int, fmt: str = "torchscript") -> Path:
    """Where the cached model file of `size_mb` MB in `fmt` lives (a .zip for huggingface)."""
    if fmt == "huggingface":
        return SCRATCH / f"hf-bert-{size_mb}mb.zip"
    return SCRATCH / f"model-{size_mb}mb.pt"


def model_build(size_mb: int, fmt: str = "torchscript") -> Path:
    """Build (or reuse) the model file of about `size_mb` MB in `fmt`."""
    path = model_path(size_mb, fmt)
    if path.exists():
        print(f"model: reusing {path} ({path.stat().st_size / MB:.0f} MB)")
        return path
    if fmt == "huggingface":
        return hf_build(size_mb, path)
    layers = max(1, round(size_mb * MB / LAYER_BYTES))
    partial = path.with_suffix(".partial")
    started = time.monotonic()
    # A subprocess, so the model's memory is gone before anything is measured.
    subprocess.run([PYTHON, "-c", BUILD_MODEL, str(layers), str(partial)], check=True)
    partial.rename(path)
    took = time.monotonic() - started
    print(f"model: built {path} ({layers} layers, {path.stat().st_size / MB:.0f} MB) in {took:.1f}s")
    return path


def hf_build(size_mb: int, path: Path) -> Path:
    """Build a save_pretrained BertModel directory of about `size_mb` MB and zip it (stored) into `path`."""
    partial = path.with_suffix(".partial")
    directory = hf_build_dir(path)
    started = time.monotonic()
    # A subprocess, as for TorchScript: the model's memory (and transformers) are gone before any measuring.
    subprocess.run([PYTHON, "-c", BUILD_HF, str(size_mb * MB), str(directory), str(partial)], cwd=REPO, check=True)
    partial.rename(path)
    took = time.monotonic() - started
    print(f"model: built {path} (zip, stored, {path.stat().st_size / MB:.0f} MB) in {took:.1f}s")
    return path


def hf_build_dir(path: Path) -> Path:
    """The scratch save_pretrained directory zipped into `path` (removed once zipped)."""
    return path.with_name(path.name.removesuffix(".zip"))


def upload_fields(fmt: str) -> list[str]:
    """The multipart fields sent beside the file: the signature, or the Hugging Face format and task."""
    if fmt == "huggingface":
        return ["format=huggingface", f"task={HF_TASK}"]
    return [f"signature={SIGNATURE}"]


# --- portal setup ----------------------------------------------------------------------------


def portal_env(limit: int | None = None) -> dict[str, str]:
    """Environment for manage.py and the web servers: scratch SQLite, local Redis broker."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MODEL_UPLOAD_MAX_BYTES")}
    env.update(PORTAL_DATA_DIR=str(DATA_DIR), CELERY_BROKER_URL=BROKER_URL, DJANGO_SETTINGS_MODULE="portal.settings")
    env.pop("CELERY_RESULT_BACKEND", None)
    if limit is not None:
        env["MODEL_UPLOAD_MAX_BYTES"] = str(limit)
    return env


def manage(*args: str) -> str:
    """Run manage.py with the bench environment and return its stdout."""
    done = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=REPO, env=portal_env(), check=True, capture_output=True, text=True
    )
    return done.stdout


def portal_setup() -> str:
    """A fresh database with the demo admin; returns an API token for it."""
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    DATA_DIR.mkdir(parents=True)
    manage("migrate", "-v0")
    manage("seed_demo")
    code = (
        "from django.contrib.auth.models import User; from accounts.services import token_create; "
        f"print(token_create(user=User.objects.get(username='admin'), name='bench-{secrets.token_hex(4)}')[1])"
    )
    return manage("shell", "-c", code).strip().splitlines()[-1]


# --- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A web server running the portal in its own process group."""

    kind: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    handler_pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


RUNNING: list[Server] = []


def server_command(kind: str, port: int) -> list[str]:
    """The command line that serves the portal with `kind`."""
    if kind == "gunicorn":
        return [
            PYTHON, "-m", "gunicorn", "portal.wsgi", "--bind", f"127.0.0.1:{port}",
            "--workers", "1", "--threads", "4", "--timeout", "600",
        ]  # fmt: skip
    if kind == "uvicorn":
        return [
            PYTHON, "-m", "uvicorn", "portal.asgi:application", "--lifespan", "off",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
    raise ValueError(f"unknown server {kind!r}")


def server_start(kind: str, tag: str, limit: int | None = None, timeout: float = 60) -> Server:
    """Start a server, wait for /healthz and find the process that handles requests."""
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{kind}-{tag}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            server_command(kind, port), cwd=REPO, env=portal_env(limit), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = Server(kind, port, process, log)
    RUNNING.append(server)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not answer /healthz within {timeout:.0f}s; see {log}") from None
            time.sleep(0.2)
    server.handler_pid = handler_pid(server)
    return server


def handler_pid(server: Server) -> int:
    """The pid that serves requests: gunicorn's (single) worker child, or uvicorn itself."""
    if server.kind != "gunicorn":
        return server.process.pid
    for _ in range(50):
        children = psutil.Process(server.process.pid).children()
        if children:
            return children[0].pid
        time.sleep(0.1)
    raise RuntimeError("gunicorn has no worker process")


def server_stop(server: Server) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    if server in RUNNING:
        RUNNING.remove(server)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=5)


def servers_stop_all() -> None:
    """Stop every server this script started."""
    for server in list(RUNNING):
        server_stop(server)


# --- /proc readings --------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid` in bytes."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def proc_io(pid: int) -> dict[str, int]:
    """The counters of /proc/<pid>/io (write_bytes: bytes sent to the storage layer)."""
    lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    return {key: int(value) for key, _, value in (line.partition(": ") for line in lines)}


def hwm_reset(pid: int) -> bool:
    """Reset the peak RSS (VmHWM) of `pid` to its current RSS; False where the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler(threading.Thread):
    """Samples the RSS of a process every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
                self.samples += 1
            except psutil.Error:
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


# --- HTTP ------------------------------------------------------------------------------------


def model_create(server: Server, token: str) -> None:
    """Create the benchmark model; an existing one (409/400) is fine."""
    request = urllib.request.Request(
        server.url + "/api/v1/models/",
        data=json.dumps({"name": MODEL_NAME}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as error:
        if error.code not in (400, 409):
            raise


@dataclass
class Upload:
    """One curl upload and what the server did meanwhile."""

    label: str
    format: str = "torchscript"
    status: str = ""
    seconds: float = 0.0
    sent: int = 0
    size: int = 0
    rss_before: int = 0
    rss_peak: int = 0
    hwm_after: int = 0
    hwm_reset: bool = False
    write_bytes: int = 0
    curl_error: str = ""
    body: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        return self.sent / MB / self.seconds if self.seconds else 0.0


def upload(
    server: Server, token: str, path: Path, label: str, fmt: str = "torchscript", expect_continue: bool = False
) -> Upload:
    """POST the file as a new version with curl, sampling the handler's memory and disk writes."""
    pid = server.handler_pid
    result = Upload(label, format=fmt, size=path.stat().st_size)
    response_file = SCRATCH / "response.json"
    command = ["curl", "-sS", "-o", str(response_file), "-w", "%{http_code} %{time_total} %{size_upload}"]
    command += ["--max-time", "600", "-H", f"Authorization: Bearer {token}"]
    if not expect_continue:
        command += ["-H", "Expect:"]  # send the body at once, as API clients (requests, httpx) do
    command += ["-F", f"file=@{path}"]
    for item in upload_fields(fmt):
        command += ["-F", item]
    command.append(f"{server.url}/api/v1/models/{MODEL_NAME}/versions/")
    response_file.unlink(missing_ok=True)
    result.rss_before = proc_status(pid)["VmRSS"]
    result.hwm_reset = hwm_reset(pid)
    io_before = proc_io(pid)["write_bytes"]
    sampler = RssSampler(pid)
    sampler.start()
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        result.rss_peak = sampler.stop()
    time.sleep(0.2)  # let the server finish writing after a refused (reset) connection
    result.write_bytes = proc_io(pid)["write_bytes"] - io_before
    after = proc_status(pid)
    result.hwm_after = after["VmHWM"]
    result.rss_peak = max(result.rss_peak, after["VmRSS"])
    code, seconds, sent = ([*done.stdout.split(), "", "", ""])[:3]
    result.status = code or "?"
    result.seconds = float(seconds or 0)
    result.sent = int(float(sent or 0))
    if done.returncode:
        result.curl_error = f"curl exit {done.returncode}: {done.stderr.strip()}"
    if response_file.exists():
        text = response_file.read_text(errors="replace")
        result.body = text[:300]
        response_file.unlink()
        if result.status.startswith("2"):
            with contextlib.suppress(ValueError, AttributeError):
                answer = json.loads(text)
                result.extra.update({key: answer.get(key) for key in ("version", "format", "task", "status")})
    return result


def accepted(result: Upload) -> str:
    """What the registry answered for an accepted upload: the version it created, its format and task."""
    if "version" not in result.extra:
        return ""
    extra = result.extra
    task = f", task {extra['task']}" if extra.get("task") else ""
    return f" (version {extra['version']}, format {extra['format']}{task}, {extra['status']})"


def log_problems(log: Path) -> list[str]:
    """Lines of a server log that point at trouble: tracebacks, errors, 5xx answers."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    markers = ("Traceback", "ERROR", "CRITICAL", "WORKER TIMEOUT", '" 50', " 500 ", " 502 ", " 503 ")
    return [line for line in lines if any(marker in line for marker in markers)]


# --- main ------------------------------------------------------------------------------------


def bench_server(kind: str, token: str, path: Path, repeat: int, fmt: str) -> tuple[list[Upload], list[str]]:
    """Accepted uploads, then over-limit ones on a server restarted with half the file size as the limit."""
    results: list[Upload] = []
    problems: list[str] = []
    server = server_start(kind, "accept")
    try:
        model_create(server, token)
        for run in range(1, repeat + 1):
            result = upload(server, token, path, f"upload {run}", fmt)
            results.append(result)
            print(
                f"  {kind} {fmt} {result.label}: {result.status} in {result.seconds:.1f}s{accepted(result)}", flush=True
            )
    finally:
        server_stop(server)
    problems += [f"{server.log.name}: {line}" for line in log_problems(server.log)]
    limit = path.stat().st_size // 2
    server = server_start(kind, "limit", limit=limit)
    try:
        for expect in (False, True):
            label = "over limit" + (" (Expect: 100)" if expect else "")
            result = upload(server, token, path, label, fmt, expect_continue=expect)
            result.extra["limit"] = limit
            results.append(result)
            print(f"  {kind} {fmt} {result.label}: {result.status} in {result.seconds:.2f}s", flush=True)
    finally:
        server_stop(server)
    problems += [f"{server.log.name}: {line}" for line in log_problems(server.log)]
    return results, problems


def table(rows: list[tuple[str, Upload]]) -> str:
    """The compact result table."""
    header = (
        f"{'server':<9} {'format':<11} {'upload':<24} {'status':>6} {'sec':>7} {'MB/s':>7} {'sent MB':>8} "
        f"{'RSS before':>10} {'RSS peak':>9} {'VmHWM':>7} {'disk wr MB':>10}"
    )
    lines = [header, "-" * len(header)]
    for kind, r in rows:
        lines.append(
            f"{kind:<9} {r.format:<11} {r.label:<24} {r.status:>6} {r.seconds:>7.2f} {r.mb_per_s:>7.1f} "
            f"{r.sent / MB:>8.1f} {r.rss_before / MB:>10.1f} {r.rss_peak / MB:>9.1f} {r.hwm_after / MB:>7.1f} "
            f"{r.write_bytes / MB:>10.1f}"
        )
    return "\n".join(lines)


def main() -> int:
    """Parse flags, run the benchmark, print the table; servers are always stopped."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="model size in MB (10**6 bytes); default 1024")
    parser.add_argument(
        "--format", choices=FORMATS, default="torchscript", help="model uploaded: torchscript (default) or huggingface"
    )
    parser.add_argument("--servers", default="gunicorn,uvicorn", help="comma-separated: gunicorn,uvicorn")
    parser.add_argument("--repeat", type=int, default=2, help="accepted uploads per server; default 2")
    parser.add_argument("--keep", action="store_true", help="keep the model file and uploaded artifacts")
    args = parser.parse_args()
    kinds = [kind.strip() for kind in args.servers.split(",") if kind.strip()]
    for kind in kinds:
        server_command(kind, 0)  # refuse unknown names before any work
    if shutil.which("curl") is None:
        parser.error("curl is required")

    def _terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, Upload]] = []
    problems: list[str] = []
    started = time.monotonic()
    try:
        path = model_build(args.size_mb, args.format)
        token = portal_setup()
        for kind in kinds:
            print(f"{kind}:", flush=True)
            results, found = bench_server(kind, token, path, args.repeat, args.format)
            rows += [(kind, result) for result in results]
            problems += found
    finally:
        servers_stop_all()
        path = model_path(args.size_mb, args.format)
        if args.format == "huggingface":
            shutil.rmtree(hf_build_dir(path), ignore_errors=True)  # left only by an interrupted build
        if not args.keep:
            path.unlink(missing_ok=True)
            path.with_suffix(".partial").unlink(missing_ok=True)
            shutil.rmtree(DATA_DIR, ignore_errors=True)

    size = rows[0][1].size if rows else 0
    what = (
        f"huggingface: a zip (stored) of a save_pretrained BertModel directory, task={HF_TASK}"
        if args.format == "huggingface"
        else "torchscript: a scripted Sequential of Linear(4000, 4000), with its signature"
    )
    print(f"\nformat {what}")
    print(f"file {size / MB:.1f} MB, over-limit runs with MODEL_UPLOAD_MAX_BYTES={size // 2} (MB = 10**6 bytes)")
    print("RSS/VmHWM are of the request-handling process (gunicorn worker / uvicorn); RSS peak sampled every 0.1 s;")
    reset = all(r.hwm_reset for _, r in rows)
    print("VmHWM " + ("reset before each upload (clear_refs)" if reset else "NOT reset: peak since process start"))
    print("disk wr = /proc/<pid>/io write_bytes delta of that process during the upload\n")
    print(table(rows))
    for kind, r in rows:
        if r.curl_error or not r.status.startswith("2"):
            detail = r.curl_error or "-"
            print(f"{kind} {r.format} {r.label}: status {r.status}; {detail}; body: {r.body.strip()[:160] or '-'}")
    print(f"\nserver logs: {LOG_DIR}  ({len(problems)} suspicious lines)")
    for line in problems[:20]:
        print(f"  {line}")
    print(f"total {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
