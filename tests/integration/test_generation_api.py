"""Text generation end to end: the official `openai` client and raw HTTP against the gateway under
uvicorn, with real worker processes running the generation engines (a tiny random GPT-2)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import torch
from django.conf import settings
from django.core.files import File
from transformers import AutoModelForCausalLM, AutoTokenizer

from accounts import services as token_services
from core import redis as shared_redis
from inference import validation
from portal import text_models
from registry import services
from registry.models import ModelVersion, RegisteredModel, VersionStatus
from tests.integration.conftest import auth, session_headers
from tests.worker import Processes, start_gateway, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]

LONG_PROMPT = "Once upon a time"
PROMPTS = ["Once", "The cat sat on the mat and", "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z " * 3, "Hi!"]


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny GPT-2 (random weights, trained tokenizer with a chat template): its directory and archive."""
    root = tmp_path_factory.mktemp("gpt")
    directory = text_models.gpt2_save(root / "gpt", size="tiny")
    return {"directory": directory, "archive": text_models.directory_zip(directory, root / "gpt.zip")}


def serve(
    owner: Any, name: str, archive: Path, task: str = "text-generation", queue: str | None = None
) -> ModelVersion:
    """Register, upload, validate (in this process) and put a model in production (on `queue`)."""
    model = services.model_create(actor=owner, name=name)
    if queue is not None:
        RegisteredModel.objects.filter(pk=model.pk).update(serving_queue=queue)
    with archive.open("rb") as stream:
        version = services.version_upload(
            actor=owner, model=model, file=File(stream, name=archive.name), filename=archive.name, task=task,
            enqueue=False,
        )  # fmt: skip
    status = validation.version_validate(version.pk)
    version.refresh_from_db()
    assert status == VersionStatus.READY, version.status_reason
    services.alias_set(actor=owner, model=model, name="production", version_number=version.version)
    return version


def warm(url: str, token: str, model: str) -> None:
    """The first request of a model builds its engine on the worker (loading the model can take longer
    than the test gateway's 4 s wait): ask until it answers."""
    deadline = time.monotonic() + 120
    while True:
        answer = requests.post(f"{url}/v1/completions", json={"model": model, "prompt": "warm", "max_tokens": 1},
                               headers=auth(token), timeout=60)  # fmt: skip
        if answer.status_code == 200 or time.monotonic() > deadline:
            break
        assert answer.status_code in (503, 504), answer.text
        time.sleep(0.5)
    assert answer.status_code == 200, answer.text


def client_for(gateway_url: str, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=token, max_retries=0, timeout=60)


class Reference:
    """What transformers' own greedy generate() answers, decoded as the worker decodes (until EOS)."""

    def __init__(self, directory: Path) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(directory).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(directory)

    def complete(self, prompt: str, max_tokens: int) -> tuple[str, str]:
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=max_tokens, pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
        new = out[0, ids.shape[1] :].tolist()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        ended = next((i for i, token in enumerate(new) if token in eos_ids), None)
        if ended is not None:
            return self.tokenizer.decode(new[:ended]), "stop"
        return self.tokenizer.decode(new), "length"


def test_the_openai_client_streams_a_chat_with_a_scoped_token(gateway_url, owner, gpt):
    serve(owner, "gpt", gpt["archive"])
    token = token_services.token_create(user=owner, name="chat", scopes=["predict"], models=["gpt"])[1]
    warm(gateway_url, token, "gpt")
    client = client_for(gateway_url, token)
    assert "gpt" in [model.id for model in client.models.list()]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    stream = client.chat.completions.create(model="gpt", messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    finished = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finished in (["length"], ["stop"]) and chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens > 4 and 1 <= usage.completion_tokens <= 12
    # The same request not streamed answers the same text (greedy).
    answer = client.chat.completions.create(model="gpt:1", messages=messages, max_tokens=12, temperature=0)
    assert answer.choices[0].message.content == text and answer.choices[0].message.role == "assistant"
    assert answer.usage is not None and answer.usage.total_tokens == usage.total_tokens
    # The token is scoped to this model: another one is invisible to it.
    serve(owner, "gpt-other", gpt["archive"])
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-other", prompt="x", max_tokens=2)


def test_greedy_answers_equal_transformers_generate_alone_and_concurrently(gateway_url, token, owner, gpt):
    serve(owner, "gpt", gpt["archive"])
    warm(gateway_url, token, "gpt")
    reference = Reference(gpt["directory"])
    client = client_for(gateway_url, token)
    expected = {prompt: reference.complete(prompt, 24) for prompt in PROMPTS}

    def streamed(prompt: str) -> tuple[str, str]:
        stream = client.completions.create(model="gpt", prompt=prompt, max_tokens=24, temperature=0, stream=True)
        chunks = list(stream)
        return "".join(chunk.choices[0].text for chunk in chunks), chunks[-1].choices[0].finish_reason

    def whole(prompt: str) -> tuple[str, str]:
        answer = client.completions.create(model="gpt", prompt=prompt, max_tokens=24, temperature=0)
        return answer.choices[0].text, answer.choices[0].finish_reason

    prompt = PROMPTS[1]
    assert streamed(prompt) == expected[prompt]
    assert whole(prompt) == expected[prompt]
    # Many at once, prompts of different lengths, streamed and not: they share the engine's batch.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(fn, p): p for p in PROMPTS for fn in (streamed, whole)}
        for future, p in futures.items():
            assert future.result(timeout=60) == expected[p], p


def _monitor(stop: threading.Event, lines: list[str]) -> None:
    """Every command the private Redis runs (the test session's own server), as MONITOR prints them."""
    with shared_redis.client(timeout=None).monitor() as monitor:
        for command in monitor.listen():
            lines.append(command["command"])
            if stop.is_set():
                return


def test_a_client_that_disconnects_cancels_its_sequence_on_the_worker(gateway_url, token, owner, gpt):
    serve(owner, "gpt", gpt["archive"])
    # Greedy, this model runs its whole max_tokens (no end of text): only a cancel ends it early.
    assert Reference(gpt["directory"]).complete(LONG_PROMPT, 400)[1] == "length"
    warm(gateway_url, token, "gpt")
    stop, lines = threading.Event(), []
    watcher = threading.Thread(target=_monitor, args=(stop, lines), daemon=True)
    watcher.start()
    time.sleep(0.2)
    body = {"model": "gpt", "prompt": LONG_PROMPT, "max_tokens": 400, "temperature": 0, "stream": True}
    with requests.post(f"{gateway_url}/v1/completions", json=body, headers=auth(token), stream=True,
                       timeout=30) as response:  # fmt: skip
        assert response.status_code == 200
        events = response.iter_lines()
        received = [next(events) for _ in range(4)]  # two events and their blank lines
    assert received[0].startswith(b"data: {")
    hung_up = time.monotonic()

    def cancelled() -> str | None:
        pushes = [line for line in lines if line.startswith("LPUSH maas:gen:cancel:")]
        return pushes[0].split()[-1] if pushes else None

    deadline = time.monotonic() + 10
    while cancelled() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    request_id = cancelled()
    assert request_id is not None, "the gateway pushed no cancel"
    # The worker dropped the sequence: its last event for it says "cancelled", and none follows.
    while time.monotonic() < deadline:
        mine = [line for line in lines if line.startswith("LPUSH maas:gen:stream:") and request_id in line]
        if mine and "cancelled" in mine[-1]:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the worker never reported the sequence cancelled")
    dropped_in = time.monotonic() - hung_up
    outputs = len(mine)
    time.sleep(0.5)
    assert len([line for line in lines if line.startswith("LPUSH maas:gen:stream:") and request_id in line]) == outputs
    stop.set()
    assert outputs < 300, f"{outputs} steps ran before the cancel took: the sequence was not dropped early"
    assert dropped_in < 3


def test_a_worker_killed_mid_stream_ends_it_with_an_error_and_a_replacement_serves_the_next(
    owner, gpt, token, service_environment, shared_data_dir, processes: Processes
):
    serve(owner, "gpt-kill", gpt["archive"], queue="gen-kill")
    # A stall timer far longer than the test: the stream must end because the death is seen.
    environment = {**service_environment, "GENERATION_STALL_SECONDS": "60", "GENERATION_MAX_QUEUED": "2"}
    log = shared_data_dir / "gateway-kill.log"
    _, url = start_gateway(processes, environment, log)
    worker = start_worker(processes, environment, shared_data_dir / "worker-kill.log", queues="gen-kill")
    assert Reference(gpt["directory"]).complete(LONG_PROMPT, 480)[1] == "length"
    body = {"model": "gpt-kill", "prompt": LONG_PROMPT, "max_tokens": 480, "temperature": 0, "stream": True}
    warm(url, token, "gpt-kill")
    with requests.post(f"{url}/v1/completions", json=body, headers=auth(token), stream=True, timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines).startswith(b"data: {")
        os.killpg(worker.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        rest = [line for line in lines if line]
    ended_in = time.monotonic() - killed
    assert rest[-1] == b"data: [DONE]"
    error = json.loads(rest[-2].removeprefix(b"data: "))["error"]
    assert "stopped (it died or was shut down) before it finished" in error["message"], error
    assert error["type"] == "server_error"
    assert ended_in < 3, f"the stream ended {ended_in:.1f}s after its worker died"
    # The killed worker is seen dead at once (its heartbeat connection to Redis closed with it):
    # a request meanwhile is refused 503 with Retry-After, not queued behind nobody.
    refused = requests.post(f"{url}/v1/completions", json=body, headers=auth(token), timeout=10)
    assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()
    assert "No live worker" in refused.json()["error"]["message"]
    # A replacement serves the next request.
    start_worker(processes, environment, shared_data_dir / "worker-kill-2.log", queues="gen-kill")
    # Its first request builds its engine (retried past the gateway's 4 s wait while it loads).
    warm(url, token, "gpt-kill")
    answer = requests.post(f"{url}/v1/completions", json={**body, "stream": False, "max_tokens": 4},
                           headers=auth(token), timeout=60)  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] >= 1


def test_every_bad_request_is_a_named_openai_error(gateway_url, owner, gpt, tmp_path):
    serve(owner, "gpt", gpt["archive"])
    bert = text_models.bert_save(tmp_path / "bert", "fill-mask")
    serve(owner, "bert", text_models.directory_zip(bert, tmp_path / "bert.zip"), task="fill-mask")
    token = token_services.token_create(user=owner, name="limited", tokens_per_minute=60)[1]
    warm(gateway_url, token, "gpt")
    url = f"{gateway_url}/v1"
    chat = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    completion = {"model": "gpt", "prompt": "hi", "max_tokens": 4}
    cases: list[tuple[str, Any, int, str]] = [
        ("completions", {**completion, "model": "nope"}, 404, "not found"),
        ("completions", {**completion, "model": "bert"}, 400, "is a fill-mask model"),
        ("completions", {**completion, "prompt": "word " * 600}, 400, "context"),
        ("completions", {**completion, "max_tokens": 5000}, 400, "over the maximum of"),
        ("chat/completions", {**chat, "n": 3}, 400, "n=3 is not supported"),
        ("chat/completions", {**chat, "temperature": -1}, 400, "temperature must be between 0 and 2"),
        ("chat/completions", {**chat, "top_p": 2}, 400, "top_p must be above 0 and at most 1"),
        ("chat/completions", {**chat, "messages": []}, 400, "messages must be a non-empty list"),
        ("chat/completions", {**chat, "messages": [{"role": "tool", "content": "x"}]}, 400, "unknown role 'tool'"),
        ("chat/completions", b'{"model": "gpt", "messages": [', 400, "not valid JSON"),
        ("completions", {**completion, "prompt": "x" * (1024 * 1024 + 10)}, 413, "larger than the limit"),
    ]
    for path, body, status, fragment in cases:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = requests.post(f"{url}/{path}", data=data, timeout=30,
                               headers={**auth(token), "Content-Type": "application/json"})  # fmt: skip
        assert answer.status_code == status, (fragment, answer.text)
        error = answer.json()["error"]
        assert fragment in error["message"], (fragment, error)
    # The other doors refuse a generative model and point here.
    v2 = requests.post(f"{gateway_url}/v2/models/gpt/infer", json={"inputs": []}, headers=auth(token), timeout=30)
    assert v2.status_code == 400 and "/v1/completions" in v2.json()["error"]
    # Tokens per minute: answers are charged (prompt + completion) until the window is spent.
    spent = 0
    for _ in range(40):
        answer = requests.post(f"{url}/completions", json={**completion, "max_tokens": 16}, headers=auth(token),
                               timeout=30)  # fmt: skip
        if answer.status_code == 429:
            break
        assert answer.status_code == 200, answer.text
        spent += answer.json()["usage"]["total_tokens"]
    assert answer.status_code == 429 and spent >= 60 and answer.headers["Retry-After"].isdigit()
    assert answer.json()["error"]["type"] == "tokens"


def test_the_playground_streams_through_django_unbuffered_and_a_disconnect_cancels(
    worker, token, owner, gpt, service_environment, shared_data_dir, processes: Processes
):
    version = serve(owner, "gpt", gpt["archive"])
    # A server that signs sessions with this process's key, so the session made here is valid there.
    environment = {**service_environment, "SECRET_KEY": settings.SECRET_KEY}
    _, gateway_url = start_gateway(processes, environment, shared_data_dir / "gateway-playground.log")
    warm(gateway_url, token, "gpt")
    url = f"{gateway_url}/playground/gpt/{version.version}/chat/"
    headers = session_headers(owner)
    messages = [{"role": "user", "content": "Tell me a story"}]
    refused = requests.post(url, json={"messages": messages}, headers={"Cookie": headers["Cookie"]}, timeout=30)
    assert refused.status_code == 403  # no CSRF header
    # Chunks arrive as they are generated (nothing buffers the whole answer on the way).
    started = time.perf_counter()
    arrivals: list[float] = []
    events: list[bytes] = []
    with requests.post(url, json={"messages": messages, "temperature": 0, "max_tokens": 200}, headers=headers,
                       stream=True, timeout=60) as response:  # fmt: skip
        assert response.status_code == 200 and response.headers["Content-Type"] == "text/event-stream"
        for line in response.iter_lines():
            if line:
                arrivals.append(time.perf_counter() - started)
                events.append(line)
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(event.removeprefix(b"data: ")) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant" and chunks[0]["model"] == f"gpt:{version.version}"
    assert len(chunks) > 20 and arrivals[0] < arrivals[-1] / 2, (arrivals[0], arrivals[-1])
    # A browser that goes away cancels the sequence on the worker.
    stop, lines = threading.Event(), []
    watcher = threading.Thread(target=_monitor, args=(stop, lines), daemon=True)
    watcher.start()
    time.sleep(0.2)
    with requests.post(url, json={"messages": messages, "temperature": 0, "max_tokens": 400}, headers=headers,
                       stream=True, timeout=60) as response:  # fmt: skip
        lines_in = response.iter_lines()
        assert next(lines_in).startswith(b"data: {")
    deadline = time.monotonic() + 10
    while not any(line.startswith("LPUSH maas:gen:cancel:") for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    assert any(line.startswith("LPUSH maas:gen:cancel:") for line in lines), "no cancel reached the worker"
