"""A real Celery worker process generating text: the messages contract driven directly over Redis.

A tiny random GPT-2 is uploaded and validated here, then requests are LPUSHed on the worker's
serving queue as a gateway does and its StepEvents read back from the gateway's stream list.
(The HTTP side, /v1/completions and its SSE, is tested with the gateway.)
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from django.core.files import File
from transformers import AutoModelForCausalLM, AutoTokenizer

from core import redis as shared_redis
from inference import validation
from inference.generation.messages import (
    Accepted,
    Event,
    GenerateRequest,
    Output,
    Refused,
    StepEvents,
    cancel_key,
    request_queue_key,
    stream_key,
)
from portal import text_models
from registry import services
from registry.models import ModelVersion, VersionStatus

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]

QUEUE = "inference"  # what the session's worker serves
PROMPTS = ["Paris is", "The model answers questions about the portal", "Café crème", "Hi"]


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return text_models.gpt2_save(tmp_path_factory.mktemp("gpt") / "gpt2-tiny", size="tiny")


@pytest.fixture
def generative(owner: Any, gpt_dir: Path, tmp_path: Path) -> ModelVersion:
    model = services.model_create(actor=owner, name=f"gpt-{uuid.uuid4().hex[:6]}")
    archive = text_models.directory_zip(gpt_dir, tmp_path / "gpt2.zip")
    with archive.open("rb") as stream:
        version = services.version_upload(actor=owner, model=model, file=File(stream, name=archive.name),
                                          filename=archive.name, enqueue=False)  # fmt: skip
    status = validation.version_validate(version.pk)
    version.refresh_from_db()
    assert status == VersionStatus.READY, version.status_reason
    return version


def push(client: redis.Redis, gateway: str, version_id: int, **fields: Any) -> str:
    params = {"max_tokens": 10, "temperature": 0.0} | fields.pop("params", {})
    request = GenerateRequest(
        id=uuid.uuid4().hex, reply_to=stream_key(gateway), version_id=version_id, sent_at=time.time(),
        deadline=time.time() + 60, prompt=fields.get("prompt"), messages=fields.get("messages"), params=params,
    )  # fmt: skip
    client.lpush(request_queue_key(QUEUE), request.encode())
    return request.id


def collect(client: redis.Redis, gateway: str, ids: list[str], timeout: float = 60) -> dict[str, list[Event]]:
    """Read the gateway's stream until every request ended (a finish reason or a refusal)."""
    events: dict[str, list[Event]] = {request_id: [] for request_id in ids}

    def ended(group: list[Event]) -> bool:
        return bool(group) and (isinstance(group[-1], Refused) or getattr(group[-1], "finish_reason", None) is not None)

    deadline = time.monotonic() + timeout
    while not all(ended(group) for group in events.values()):
        assert time.monotonic() < deadline, f"the worker did not finish: {events}"
        item = client.brpop([stream_key(gateway)], timeout=1)
        if item is None:
            continue
        for event in StepEvents.decode(item[1]).events:
            events.setdefault(event.request_id, []).append(event)
    return events


def reference(gpt_dir: Path, prompts: list[str], max_tokens: int) -> dict[str, list[int]]:
    model = AutoModelForCausalLM.from_pretrained(gpt_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt_dir)
    out = {}
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_tokens)
        out[prompt] = generated[0, ids.shape[1] :].tolist()
    return out


def test_a_worker_streams_greedy_completions_equal_to_generate_and_cancels_on_request(worker, generative, gpt_dir):
    client = shared_redis.client()
    gateway = f"test-gw-{uuid.uuid4().hex[:8]}"
    ids = {push(client, gateway, generative.pk, prompt=prompt): prompt for prompt in PROMPTS}
    events = collect(client, gateway, list(ids))
    expected = reference(gpt_dir, PROMPTS, 10)
    tokenizer = AutoTokenizer.from_pretrained(gpt_dir)
    for request_id, prompt in ids.items():
        group = events[request_id]
        assert isinstance(group[0], Accepted) and group[0].prompt_tokens == len(tokenizer(prompt)["input_ids"])
        outputs = [event for event in group[1:] if isinstance(event, Output)]
        assert [t for event in outputs for t in event.token_ids] == expected[prompt], worker.output()[-3000:]
        assert "".join(event.text for event in outputs) == tokenizer.decode(expected[prompt])

    # A long generation, cancelled as a gateway does when its client goes away.
    long = push(client, gateway, generative.pk, prompt=PROMPTS[1], params={"max_tokens": 400})
    accepted: list[Event] = []
    deadline = time.monotonic() + 60
    while not any(isinstance(event, Output) for event in accepted):
        assert time.monotonic() < deadline
        item = client.brpop([stream_key(gateway)], timeout=1)
        if item is not None:
            message = StepEvents.decode(item[1])
            accepted += message.events
    client.lpush(cancel_key(message.worker), long)
    rest = collect(client, gateway, [long])[long]
    assert rest[-1].finish_reason == "cancelled"  # type: ignore[union-attr]
    assert rest[-1].completion_tokens < 400  # type: ignore[union-attr]


def test_a_worker_applies_the_chat_template_and_refuses_what_it_cannot_run(worker, generative):
    client = shared_redis.client()
    gateway = f"test-gw-{uuid.uuid4().hex[:8]}"
    chat = push(client, gateway, generative.pk, messages=[{"role": "user", "content": "Write a poem"}])
    too_long = push(client, gateway, generative.pk, prompt="word " * 150, params={"max_tokens": 100})
    missing = push(client, gateway, generative.pk + 1000, prompt="Hi")
    events = collect(client, gateway, [chat, too_long, missing])
    assert isinstance(events[chat][0], Accepted) and events[chat][0].prompt_tokens > 10
    assert events[chat][-1].finish_reason in ("stop", "length")  # type: ignore[union-attr]
    (refused,) = events[too_long]
    assert isinstance(refused, Refused) and refused.status == 400 and "context of 512" in refused.message
    (unavailable,) = events[missing]
    assert isinstance(unavailable, Refused) and unavailable.status == 503 and "cannot serve" in unavailable.message
