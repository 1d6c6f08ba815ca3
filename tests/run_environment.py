"""What a test run owns, set up before Django is (loaded with `-p tests.run_environment`).

pytest-django configures Django, and so imports monitoring.metrics (which picks its
Prometheus directory at import), before any conftest.py is read; this plugin runs
earlier. Every run gets its own temporary directory, shared by its xdist workers and
the worker and web processes the tests start (they inherit the environment):

- PROMETHEUS_MULTIPROC_DIR: one directory per pytest process under it, so no value file
  lands in var/ and no two runs (or xdist workers) sum each other's figures;
- PORTAL_DATA_DIR, unless given: the SQLite test database, the embedded Redis socket
  and the generated secret key of this run, not of every run in the checkout;
- MAAS_TEST_RUN_ID: a short id that names what the run creates in shared services
  (its PostgreSQL test database, see tests/conftest.py).

The directory is removed when the run that made it ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import pytest

RUN_DIR = "MAAS_TEST_RUN_DIR"
RUN_ID = "MAAS_TEST_RUN_ID"
_owned: Path | None = None


def run_dir() -> Path:
    """This run's temporary directory."""
    return Path(os.environ[RUN_DIR])


def run_id() -> str:
    """This run's short id (the same in every xdist worker)."""
    return os.environ[RUN_ID]


def process_label() -> str:
    """Which pytest process of the run this is: `main`, or the xdist worker id (`gw0`, ...)."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    global _owned
    inherited = os.environ.get(RUN_DIR)
    if not (inherited and os.environ.get("PYTEST_XDIST_WORKER") and Path(inherited).is_dir()):
        # A run of its own (also a pytest started from inside a test): a fresh directory.
        identifier = uuid.uuid4().hex[:8]
        # Short: the embedded Redis socket lives under it, and socket paths are limited to 107 bytes.
        _owned = Path(tempfile.gettempdir()) / f"maas-test-{identifier}"
        _owned.mkdir(mode=0o700)
        os.environ[RUN_DIR] = str(_owned)
        os.environ[RUN_ID] = identifier
        if not os.environ.get("PORTAL_DATA_DIR"):
            os.environ["PORTAL_DATA_DIR"] = str(_owned / "data")
    prometheus = run_dir() / f"prometheus-{process_label()}"
    prometheus.mkdir(exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prometheus)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A run ended with SIGTERM (a CI timeout, `timeout`, kill) unwinds like Ctrl-C, so the
    # fixtures stop the processes they started.
    signal.signal(signal.SIGTERM, _interrupted)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _owned is not None:
        shutil.rmtree(_owned, ignore_errors=True)
