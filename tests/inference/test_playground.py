"""The playground's chat endpoint: session and CSRF, the checks of /v1/chat/completions, its event stream."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import AsyncClient, Client
from django.urls import reverse

from core import redis as shared_redis
from inference import telemetry, wire
from inference.generation.messages import GenerateRequest, StepEvents, request_queue_key
from registry import services
from registry.models import ModelVersion
from registry.roles import Role
from tests.inference.generation_fakes import QUEUE, WORKER, words

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("generation_redis")]

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0, "max_tokens": 3}


def version_of(owner: Any, name: str, task: str = "text-generation") -> ModelVersion:
    model = services.model_create(actor=owner, name=name)
    return ModelVersion.objects.create(
        model=model, version=1, format="huggingface", task=task, artifact=f"{name}.zip", sha256="0" * 64,
        size_bytes=1, status="ready", validation={"context_length": 64, "chat_template": True},
    )  # fmt: skip


def url(name: str, version: int = 1) -> str:
    return reverse("inference:playground-chat", args=[name, version])


@pytest.fixture
def signed_in(owner: Any) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def worker() -> Iterator[list[GenerateRequest]]:
    """A thread answering the inference queue like a worker (heartbeat included) with words()."""
    taken: list[GenerateRequest] = []
    stop = threading.Event()
    redis = shared_redis.client()
    # Its heartbeat rides a connection named like a worker's, open while the fixture lasts.
    beats = shared_redis.named_client(f"{wire.WORKER_CLIENT_PREFIX}{WORKER}")
    beats.hset(wire.WORKERS_KEY, WORKER, wire.Heartbeat([QUEUE], time.time() + 60, []).encode())

    def run() -> None:
        while not stop.is_set():
            item = redis.brpop([request_queue_key(QUEUE)], timeout=0.1)
            if item is None:
                continue
            request = GenerateRequest.decode(item[1])
            taken.append(request)
            for delay, events in words(request):
                time.sleep(delay)
                redis.lpush(request.reply_to, StepEvents(WORKER, time.time(), events).encode())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield taken
    stop.set()
    thread.join(5)
    beats.close()


def post(client: Client, target: str, body: Any) -> Any:
    return client.post(target, data=json.dumps(body), content_type="application/json")


def test_a_signed_in_member_gets_the_chat_completion_stream(owner, worker, monkeypatch):
    recorded: list[dict[str, Any]] = []
    monkeypatch.setattr(telemetry, "_sink", type("Sink", (), {
        "record": lambda self, **s: recorded.append(s), "usage": lambda self, **u: None,
        "generation": lambda self, **g: None,
    })())  # fmt: skip
    version_of(owner, "gpt")

    async def stream() -> tuple[Any, str]:
        # The ASGI path: the view's coroutine and its stream run on this event loop, as under uvicorn.
        client = AsyncClient()
        await client.aforce_login(owner)
        response = await client.post(url("gpt"), data=json.dumps(CHAT), content_type="application/json")
        return response, b"".join([part async for part in response.streaming_content]).decode()

    response, body = asyncio.run(stream())
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = [chunk.removeprefix("data: ") for chunk in body.split("\n\n") if chunk]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["model"] == "gpt:1"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "w0 w1 w2 "
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and chunks[-1]["choices"][0]["finish_reason"]
    (request,) = worker
    assert request.messages == [{"role": "user", "content": "Hi"}] and request.params["temperature"] == 0.0
    assert [(r["source"], r["status"]) for r in recorded] == [("native", 200)]


def test_the_playground_needs_a_session_and_a_csrf_token(owner):
    version_of(owner, "gpt")
    assert post(Client(), url("gpt"), CHAT).status_code == 401
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(owner)
    assert post(strict, url("gpt"), CHAT).status_code == 403
    assert strict.get(url("gpt")).status_code == 405


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({**CHAT, "model": "other"}, "Unrecognized field: model"),
        ({**CHAT, "messages": []}, "messages must be a non-empty list"),
        ({**CHAT, "temperature": 9}, "temperature must be between 0 and 2"),
        ({**CHAT, "max_tokens": 64}, "over the maximum of 63 tokens"),
        ("not an object", "must be a JSON object"),
    ],
)
def test_bad_playground_requests_are_json_errors(signed_in, owner, body, fragment):
    version_of(owner, "gpt")
    response = post(signed_in, url("gpt"), body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"


def test_the_playground_refuses_other_tasks_and_hides_what_the_person_may_not_see(signed_in, owner, member):
    version_of(owner, "bert", task="fill-mask")
    response = post(signed_in, url("bert"), CHAT)
    assert response.status_code == 400 and "is a fill-mask model" in response.json()["error"]["message"]
    mine = version_of(member, "private-gpt")
    assert post(signed_in, url("private-gpt"), CHAT).status_code == 404
    services.role_grant(actor=member, model=mine.model, role=Role.VIEWER, username=owner.username)
    response = post(signed_in, url("private-gpt"), CHAT)
    assert response.status_code == 403 and "not call its predictions" in response.json()["error"]["message"]
