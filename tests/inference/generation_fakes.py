"""A scripted generation worker speaking the messages contract, and a private Redis for it."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core import redis as shared_redis
from core.embedded import embedded_redis_start
from inference.generation.messages import Accepted, Event, GenerateRequest, Output, StepEvents, request_queue_key
from inference.routes import Target
from registry.access import PREDICTOR

QUEUE = "inference"
WORKER = "fake-worker@test"


@pytest.fixture(scope="session")
def generation_redis_socket() -> Iterator[Path]:
    # A short directory: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="maas-gen-") as directory:
        socket = Path(directory) / "redis.sock"
        process = embedded_redis_start(socket)
        assert process is not None
        try:
            yield socket
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
def generation_redis(generation_redis_socket: Path, settings: Any) -> Iterator[str]:
    """INFERENCE_REDIS_URL on a private, empty Redis; short waits (2 s to be taken, 0.5 s of silence)."""
    settings.INFERENCE_REDIS_URL = f"redis+socket://{generation_redis_socket}"
    settings.INFERENCE_TIMEOUT_SECONDS = 2.0
    settings.GENERATION_STALL_SECONDS = 0.5
    shared_redis.client().flushdb()  # ours alone: started by the fixture above
    yield settings.INFERENCE_REDIS_URL
    shared_redis.reset()


def generative_target(**fields: Any) -> Target:
    values: dict[str, Any] = {
        "version_id": 4, "model_name": "gpt", "version": 1, "status": "ready", "format": "huggingface",
        "signature": {}, "queue": QUEUE, "max_batch_size": 1, "max_batch_delay_ms": 0, "ready_versions": (1,),
        "model_id": 1, "actions": PREDICTOR, "task": "text-generation", "max_tokens_default": 16,
        "max_tokens_limit": 100, "context_length": 128, "chat_template": True,
    }  # fmt: skip
    return Target(**(values | fields))


class FakeWorker:
    """Takes requests from the queue and answers with `script(request)`: a list of (delay, events)."""

    def __init__(self, script: Callable[[GenerateRequest], list[tuple[float, list[Event]]]]) -> None:
        self.script = script
        self.taken: list[GenerateRequest] = []

    async def run(self) -> None:
        redis = shared_redis.async_client()
        while True:
            raw = await redis.rpop(request_queue_key(QUEUE))
            if raw is None:
                await asyncio.sleep(0.01)
                continue
            request = GenerateRequest.decode(raw)
            self.taken.append(request)
            for delay, events in self.script(request):
                await asyncio.sleep(delay)
                await redis.lpush(request.reply_to, StepEvents(WORKER, time.time(), events).encode())


def words(request: GenerateRequest, count: int = 3, delay: float = 0.01) -> list[tuple[float, list[Event]]]:
    """Accepted (5 prompt tokens), then `count` outputs "w0 ", "w1 ", ... the last ending on length."""
    steps: list[tuple[float, list[Event]]] = [(0.0, [Accepted(request.id, 5, 1.5)])]
    for index in range(count):
        reason = "length" if index == count - 1 else None
        steps.append((delay, [Output(request.id, f"w{index} ", [index], reason, index + 1, [-0.5])]))
    return steps
