"""The parent's side of a model host: its environment, settings, file policy, start and stop.

Only the trusted parent decides what a host may read: the Python install, the portal's
packages that load and serve models, the system libraries, and one model cache (or, for a
task, the one model it runs). The host's environment is built from an allow-list, never
copied: SECRET_KEY, DATABASE_URL, broker and storage credentials and any other variable
the worker holds are simply not there. Its settings are a fixed list of names, none a secret.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import redis
from django.conf import settings

import accounts
import core
import inference
import registry
from core import redis as shared_redis
from inference.cache import ModelSource, ModelUnavailable
from inference.sandbox import policy
from inference.sandbox.channel import Channel, ChannelClosed, pair
from inference.sandbox.memory import DeathWatch, HostOutOfMemory, memory_cap_apply

logger = logging.getLogger(__name__)

# A fresh host imports torch and Django: seconds on a busy machine.
START_TIMEOUT = 120.0
STOP_TIMEOUT = 5.0
# Landlock's first ABI already confines the file system; later ones add TCP, scopes, truncate, ioctl.
MINIMUM_ABI = 1
# Variables a host inherits (when set): threads, devices, locale, import path. Nothing else.
ENVIRONMENT_ALLOWED = (
    "PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
    "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH",
)  # fmt: skip
# Settings a host is given: what loading, warming up and serving models read. No secret.
SETTINGS_GIVEN = (
    "INFERENCE_DEVICE", "INFERENCE_CACHE_BYTES", "INFERENCE_TIMEOUT_SECONDS", "INFERENCE_TEXT_MAX_ITEMS",
    "INFERENCE_HEARTBEAT_SECONDS", "INFERENCE_WORKER_TTL_SECONDS", "TORCH_ARCHIVE_MAX_ENTRIES",
    "TORCH_ARCHIVE_MAX_BYTES", "ARCHIVE_MAX_RATIO",
    "INFERENCE_TEXT_PADDING", "INFERENCE_TEXT_MAX_BATCH_TOKENS", "INFERENCE_TEXT_HALF_PRECISION",
    "GENERATION_MAX_SEQUENCES", "GENERATION_MAX_CACHE_TOKENS", "GENERATION_PREFILL_TOKENS",
    "GENERATION_MAX_QUEUED", "GENERATION_MAX_TOKENS_DEFAULT", "GENERATION_MAX_TOKENS_LIMIT",
    "GENERATION_STALL_SECONDS", "HF_ARCHIVE_MAX_ENTRIES", "HF_ARCHIVE_MAX_BYTES", "CELERY_TASK_SOFT_TIME_LIMIT",
)  # fmt: skip
# The packages a host imports; the rest of the project (portal's settings, monitoring) stays unreadable.
PACKAGES = (core, registry, accounts, inference)


class SandboxError(RuntimeError):
    """A model host could not be started, or died, or broke the protocol."""


def sandbox_dir() -> Path:
    path = Path(settings.DATA_DIR) / "sandbox"
    path.mkdir(parents=True, exist_ok=True)
    return path


def host_settings(scratch: Path) -> dict[str, Any]:
    """The settings a host is configured with (JSON), with the Redis URL stripped of where and who."""
    values = {name: getattr(settings, name) for name in SETTINGS_GIVEN if hasattr(settings, name)}
    values["DATA_DIR"] = str(scratch)
    db = 0
    if settings.INFERENCE_REDIS_URL:
        db = int(redis.connection.parse_url(shared_redis.redis_url()).get("db") or 0)
        # The host never connects by itself (its sockets come from the parent): no host, no password.
        values["INFERENCE_REDIS_URL"] = f"redis://sandbox:6379/{db}"
    else:
        values["INFERENCE_REDIS_URL"] = ""
    return values


def host_environment(scratch: Path) -> dict[str, str]:
    """A host's environment: the allow-listed variables, a private HOME and TMPDIR, offline Hugging Face."""
    environment = {name: os.environ[name] for name in ENVIRONMENT_ALLOWED if name in os.environ}
    roots = [str(Path(package.__path__[0]).parent) for package in PACKAGES]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*roots, *filter(None, [environment.get("PYTHONPATH")])]))
    environment.update(
        HOME=str(scratch), TMPDIR=str(scratch), HF_HOME=str(scratch / "hf"), HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    return environment


def host_policy(models: Iterable[Path], scratch: Path) -> dict[str, list[str]]:
    """The paths of a host's Landlock rules: read, write, devices, list-only."""
    read = [*policy.python_paths(), *(Path(package.__path__[0]) for package in PACKAGES), *models]
    read += [*policy.paths(policy.SYSTEM_READ), *policy.pci_read()]
    # The project root is on sys.path: its entries may be listed, not read (the data directory may lie there).
    roots = {Path(package.__path__[0]).parent for package in PACKAGES}
    devices = policy.devices_gpu() if settings.INFERENCE_DEVICE != "cpu" else []
    return {
        "read": [str(path) for path in read],
        "write": [str(scratch), *policy.SYSTEM_WRITE],
        "devices": [str(path) for path in devices],
        "list_only": [str(path) for path in roots],
    }


def _before_exec(memory_mb: int) -> Callable[[], None]:
    """What the child does before exec: die with the thread that started it, take its memory cap."""

    def prepare() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        memory_cap_apply(memory_mb)

    return prepare


@dataclasses.dataclass
class Host:
    """A started, sandboxed model host: its process, its channel and its scratch directory."""

    process: subprocess.Popen[bytes]
    channel: Channel
    scratch: Path
    applied: dict[str, Any]
    started_seconds: float
    watch: DeathWatch

    def alive(self) -> bool:
        return self.process.poll() is None

    def death(self) -> SandboxError | HostOutOfMemory:
        """The error for a host that died: out of memory when the kernel's killer did it."""
        cause, out_of_memory = self.watch.verdict(self.process)
        if out_of_memory:
            return HostOutOfMemory(f"out of memory: {cause}")
        return SandboxError(f"the model host died while running the model: {cause}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; the scratch directory goes with it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.channel.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def host_start(
    mode: str, models: Iterable[Path], *, queues: Iterable[str] = (), timeout: float = START_TIMEOUT
) -> Host:
    """Start a host in `mode` ("serve" or "task") that may read only `models` of all model files.

    Returns once the host says its sandbox holds; SandboxError (with the host's reason)
    when it cannot be applied or the host does not come up.
    """
    started = time.perf_counter()
    scratch_root = sandbox_dir() / "scratch"
    scratch_root.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=scratch_root))
    channel, child = pair()
    config = {
        "mode": mode,
        "settings": host_settings(scratch),
        "queues": list(queues),
        "minimum_abi": MINIMUM_ABI,
        "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        **host_policy(models, scratch),
    }
    argv = [sys.executable, "-m", "inference.sandbox.host", "--channel", str(child.fileno())]
    process = subprocess.Popen(
        argv, env=host_environment(scratch), cwd=scratch, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
        preexec_fn=_before_exec(settings.MODEL_HOST_MEMORY_MB),
    )  # fmt: skip
    child.close()
    host = Host(process, channel, scratch, {}, 0.0, DeathWatch(process.pid))
    try:
        channel.sock.settimeout(timeout)
        channel.send(config)
        reply, _ = channel.receive()
        channel.sock.settimeout(None)
    except (ChannelClosed, OSError) as exc:
        host.stop()
        raise SandboxError(f"the model host did not start (exit status {process.poll()}): {exc}") from exc
    if not reply.get("ok"):
        host.stop()
        raise SandboxError(str(reply.get("error")))
    host.applied = reply.get("applied") or {}
    host.started_seconds = time.perf_counter() - started
    logger.info("model host %s (%s) up in %.2fs", process.pid, mode, host.started_seconds)
    return host


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def model_copy(source: ModelSource, cache: Path) -> ModelSource:
    """The source with its artifact copied into `cache` (a host's only model directory), by sha256.

    A single-file artifact is copied and hashed on the way (so what the host reads is what
    was verified, whatever happens to storage later); an unpacked archive (our own checked
    unpacking) is hard-linked file by file where it can be.
    """
    origin = Path(source.path)
    name = source.sha256 + ("" if origin.is_dir() else origin.suffix)
    target = cache / name
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        staging = cache / f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        try:
            if origin.is_dir():
                shutil.copytree(origin, staging, copy_function=_link_or_copy)
            else:
                digest = hashlib.sha256()
                with origin.open("rb") as reader, staging.open("wb") as writer:
                    for chunk in iter(lambda: reader.read(1024 * 1024), b""):
                        digest.update(chunk)
                        writer.write(chunk)
                if digest.hexdigest() != source.sha256:
                    raise ModelUnavailable(f"{source.model_name} v{source.version}: the artifact changed while copied")
            with contextlib.suppress(OSError):  # another process placed it first: keep theirs
                os.rename(staging, target)
        finally:
            if staging.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.unlink(missing_ok=True)
    return dataclasses.replace(source, path=str(target))


def redis_socket_fd() -> int:
    """A new descriptor of a connected, authenticated (AUTH, SELECT) socket to the serving Redis.

    Made with redis-py in this trusted process, then detached from its connection object
    without a shutdown, so the host gets the connection but never the password or address.
    """
    client = redis.Redis.from_url(shared_redis.redis_url(), socket_connect_timeout=shared_redis.CONNECT_TIMEOUT)
    connection = cast(redis.connection.AbstractConnection, client.connection_pool.make_connection())
    connection.connect()
    sock = connection._sock
    if sock is None:
        raise redis.ConnectionError("the Redis connection has no socket")
    fd = os.dup(sock.fileno())
    # Forget the socket without disconnect(): that would shut the shared connection down.
    connection._sock = None
    connection._parser.on_disconnect()
    sock.close()
    return fd
