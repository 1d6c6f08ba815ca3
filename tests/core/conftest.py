"""A Redis of the tests' own: core's tests never touch a shared one."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import redis as shared_redis
from core.embedded import embedded_redis_start


@pytest.fixture(scope="module")
def _redis_socket() -> Iterator[Path]:
    # A short directory: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="maas-core-") as directory:
        socket = Path(directory) / "redis.sock"
        process = embedded_redis_start(socket)
        assert process is not None, "a fresh directory cannot already hold a Redis"
        try:
            yield socket
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
def redis_url(_redis_socket: Path, settings: Any) -> Iterator[str]:
    """INFERENCE_REDIS_URL pointed at a private, empty Redis; clients made for it are dropped after."""
    settings.INFERENCE_REDIS_URL = f"redis+socket://{_redis_socket}"
    shared_redis.client().flushdb()  # ours alone: started by this module's fixture
    yield settings.INFERENCE_REDIS_URL
    shared_redis.reset()
