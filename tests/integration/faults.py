"""Private services for fault tests: a PostgreSQL server and Celery beat of the test's own.

Fault tests stop and start what they depend on, so they never use the machine's shared
servers: each starts its own PostgreSQL (initdb + pg_ctl on a free port, its own data
directory, removed afterwards) or Redis (tests.worker.redis_start), and stops it, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.worker import ROOT, Processes, free_port, redis_start, start_gateway, start_worker

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    """A PostgreSQL server in a temporary directory on a free port, trusting local connections."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.log = root / "postgres.log"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # PostgreSQL refuses to run as root: as the postgres user then.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *argv], check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(PG_BIN / "pg_ctl"), "start", "-D", str(self.data), "-w", "-l", str(self.log), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast: its sessions are ended, as in a restart for maintenance)."""
        self._run(str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-w", "-m", mode, check=False)

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started PostgreSQL of this test's own; stopped and deleted at the end, pass or fail."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found under {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="maas-pg-"))
    server = PrivatePostgres(root)
    try:
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(root, account.pw_uid, account.pw_gid)
        server.init()
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def portal_python(environment: dict[str, str], code: str) -> str:
    """Run Python with Django set up in a child process on `environment`; returns what it printed."""
    script = "import django\ndjango.setup()\n" + code
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def seed_tokens(environment: dict[str, str], count: int) -> list[str]:
    """Migrate the database of `environment` and create a user with `count` API tokens (their secrets)."""
    code = f"""
import json
from django.contrib.auth import get_user_model
from django.core.management import call_command
from accounts import services
call_command("migrate", verbosity=0)
user = get_user_model().objects.create_user("outage", password="outage-pass-123")
print(json.dumps([services.token_create(user=user, name=f"t{{i}}")[1] for i in range({count})]))
"""
    return list(json.loads(portal_python(environment, code).strip().splitlines()[-1]))


def start_beat(processes: Processes, environment: dict[str, str], directory: Path) -> None:
    """Celery beat of the test's own (its schedule file in `directory`), owned by `processes`."""
    argv = [sys.executable, "-m", "celery", "-A", "portal", "beat", "--schedule", str(directory / "beat-schedule"),
            "--loglevel", "INFO"]  # fmt: skip
    processes.start(argv, environment, directory / "beat.log")


class Stack:
    """A private broker, web process and the environment for workers, for one test."""

    def __init__(self, processes: Processes, environment: dict[str, str], directory: Path, token: str) -> None:
        self.processes = processes
        self.directory = directory
        self.token = token
        self.redis, self.redis_url = redis_start(processes, directory / "redis", unix_socket=False)
        self.port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        self.environment = environment | {
            "CELERY_BROKER_URL": self.redis_url, "CELERY_RESULT_BACKEND": self.redis_url,
            "INFERENCE_REDIS_URL": self.redis_url,
        }  # fmt: skip
        _, self.base = start_gateway(processes, self.environment, directory / "gateway.log")

    def worker(self, name: str, **kwargs: Any) -> Any:
        return start_worker(self.processes, self.environment, self.directory / f"{name}.log", **kwargs)

    def redis_restart(self) -> None:
        """Stop the broker and start a fresh one on the same port: whatever it held is gone."""
        self.processes.stop(self.redis)
        self.redis, _ = redis_start(self.processes, self.directory / "redis", unix_socket=False, port=self.port)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return requests.post(f"{self.base}{path}", headers=headers, timeout=60, **kwargs)

    def infer(self, model: str, body: Any, timeout: float = 60) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return requests.post(f"{self.base}/v2/models/{model}/infer", json=body, headers=headers, timeout=timeout)
