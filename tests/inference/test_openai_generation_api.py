"""/v1/completions and /v1/chat/completions through the ASGI app, over a private Redis and a scripted worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from django.contrib.auth.models import AnonymousUser
from openai.types import Completion
from openai.types.chat import ChatCompletionChunk

from core import redis as shared_redis
from core.errors import InvalidInput, NotFound
from inference import openai as openai_api
from inference import telemetry
from inference.gateway import Gateway
from inference.generation.messages import Refused, cancel_key, request_queue_key
from inference.routes import Target
from tests.inference.generation_fakes import QUEUE, WORKER, FakeWorker, generative_target, words

pytestmark = pytest.mark.usefixtures("generation_redis", "sink")


class FakeGateway(Gateway):
    """Every model is `target` (or the error `missing`), every caller anonymous, and `inference` is served."""

    def __init__(self, target: Target, missing: Exception | None = None) -> None:
        super().__init__()
        self.routed = target
        self.missing = missing

    async def user(self, headers: dict[bytes, bytes], address: str = "local") -> Any:
        return AnonymousUser()

    async def target(self, user: Any, name: str, version: str | None) -> Target:
        if self.missing is not None:
            raise self.missing
        return self.routed

    def connection(self) -> Any:
        return shared_redis.async_client()

    async def live_queues(self, wanted: str | None = None) -> set[str]:
        return {QUEUE}


class Sink:
    """Keeps what the gateway reports."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.generations: list[dict[str, Any]] = []
        self.usages: list[dict[str, Any]] = []

    def record(self, **sample: Any) -> None:
        self.records.append(sample)

    def generation(self, **sample: Any) -> None:
        self.generations.append(sample)

    def usage(self, **usage: Any) -> None:
        self.usages.append(usage)


@pytest.fixture
def sink() -> Iterator[Sink]:
    kept = Sink()
    previous = telemetry._sink
    telemetry.sink_register(kept)  # type: ignore[arg-type]
    yield kept
    telemetry.sink_register(previous)


class Exchange:
    """One HTTP exchange with the app: what it sent, and when the client hung up (after `leave_after` bodies)."""

    def __init__(self, body: Any, leave_after: int | None = None) -> None:
        self.raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.leave_after = leave_after
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        self.read = False

    async def receive(self) -> dict[str, Any]:
        if not self.read:
            self.read = True
            return {"type": "http.request", "body": self.raw, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        bodies = [m for m in self.sent if m["type"] == "http.response.body" and m.get("body")]
        if self.leave_after is not None and len(bodies) >= self.leave_after:
            self.gone.set()

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.sent[0]["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    def events(self) -> list[Any]:
        chunks = self.body.decode().split("\n\n")
        assert chunks[-1] == "", self.body
        return [chunk.removeprefix("data: ") if chunk == "data: [DONE]" else json.loads(chunk.removeprefix("data: "))
                for chunk in chunks[:-1]]  # fmt: skip


def post(
    gateway: Gateway, path: str, body: Any, worker: FakeWorker | None = None, leave_after: int | None = None
) -> Exchange:
    exchange = Exchange(body, leave_after)
    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(b"content-length", str(len(exchange.raw)).encode())]}  # fmt: skip

    async def main() -> None:
        task = asyncio.create_task(worker.run()) if worker is not None else None
        try:
            await asyncio.wait_for(openai_api.OpenAIApi(gateway)(scope, exchange.receive, exchange.send), 10)
            # What the app left running (cancels) finishes before the loop closes.
            await asyncio.sleep(0.05)
        finally:
            if task is not None:
                task.cancel()

    asyncio.run(main())
    return exchange


COMPLETION = {"model": "gpt", "prompt": "Once", "max_tokens": 3}
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def test_a_completion_answers_its_text_usage_and_reports_its_timing(sink):
    worker = FakeWorker(words)
    exchange = post(FakeGateway(generative_target()), "/v1/completions", {**COMPLETION, "temperature": 0}, worker)
    assert exchange.status == 200, exchange.body
    answer = orjson.loads(exchange.body)
    assert answer["object"] == "text_completion" and answer["model"] == "gpt"
    assert answer["choices"][0]["text"] == "w0 w1 w2 " and answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    (request,) = worker.taken
    assert request.prompt == "Once" and request.messages is None
    assert request.params == {"max_tokens": 3, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "stop": [],
                              "logprobs": False, "max_tokens_implicit": False}  # fmt: skip
    (record,) = sink.records
    assert (record["source"], record["status"], record["queue_ms"]) == ("v1", 200, 1.5)
    (generation,) = sink.generations
    assert generation["completion_tokens"] == 3 and len(generation["inter_token_ms"]) == 2
    assert 0 < generation["ttft_ms"] < 5000 and generation["decode_ms"] >= sum(generation["inter_token_ms"]) - 1
    assert all(gap > 5 for gap in generation["inter_token_ms"])  # the worker's 10 ms steps, as seen here
    assert sink.usages == [{"version_id": 4, "model": "gpt", "version": 1, "user_id": None, "token_id": None,
                            "prompt_tokens": 5, "completion_tokens": 3}]  # fmt: skip


def test_a_streamed_chat_sends_the_role_text_finish_usage_and_done(sink):
    worker = FakeWorker(words)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    exchange = post(FakeGateway(generative_target()), "/v1/chat/completions", body, worker)
    assert exchange.status == 200 and exchange.headers["content-type"] == "text/event-stream"
    events = exchange.events()
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "w0 "},
        {"content": "w1 "},
        {"content": "w2 "},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert {c["id"] for c in chunks} == {usage["id"]} and chunks[0]["object"] == "chat.completion.chunk"
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 3,
                                                         "total_tokens": 8}  # fmt: skip
    assert worker.taken[0].messages == [{"role": "user", "content": "Hi"}]
    assert [r["status"] for r in sink.records] == [200]


def test_a_refusal_before_the_stream_is_an_openai_error_with_its_status(sink):
    worker = FakeWorker(lambda r: [(0.0, [Refused(r.id, 400, "The prompt has 900 tokens; the context is 128.")])])
    exchange = post(FakeGateway(generative_target()), "/v1/completions", {**COMPLETION, "stream": True}, worker)
    assert exchange.status == 400 and exchange.headers["content-type"] == "application/json"
    error = orjson.loads(exchange.body)["error"]
    assert error["message"] == "The prompt has 900 tokens; the context is 128."
    assert error["type"] == "invalid_request_error"
    assert [r["status"] for r in sink.records] == [400]


def test_a_worker_that_goes_silent_mid_stream_ends_it_with_an_error_event(sink):
    worker = FakeWorker(lambda request: words(request, count=5)[:3])
    started = time.monotonic()
    exchange = post(FakeGateway(generative_target()), "/v1/completions", {**COMPLETION, "stream": True}, worker)
    assert time.monotonic() - started < 3
    events = exchange.events()
    assert [e["choices"][0]["text"] for e in events[:2]] == ["w0 ", "w1 "]
    assert events[2]["error"]["type"] == "server_error" and "sent nothing for 0.5s" in events[2]["error"]["message"]
    assert events[3] == "[DONE]"
    assert [r["status"] for r in sink.records] == [503]
    # Tokens read and generated before the stall are still counted.
    assert sink.generations[0]["completion_tokens"] == 2


def test_a_client_that_hangs_up_mid_stream_cancels_its_request_on_the_worker(sink):
    worker = FakeWorker(lambda request: words(request, count=100, delay=0.02))
    exchange = post(FakeGateway(generative_target()), "/v1/chat/completions", {**CHAT, "stream": True}, worker,
                    leave_after=2)  # fmt: skip
    (request,) = worker.taken
    assert shared_redis.client().lrange(cancel_key(WORKER), 0, -1) == [request.id.encode()]
    assert len(exchange.events()) < 10
    assert [r["status"] for r in sink.records] == [499]


def test_a_client_that_hangs_up_while_queued_takes_its_request_back(sink, settings):
    exchange = Exchange({**COMPLETION})
    scope = {"type": "http", "method": "POST", "path": "/v1/completions",
             "headers": [(b"content-length", str(len(exchange.raw)).encode())]}  # fmt: skip

    async def main() -> int:
        task = asyncio.create_task(openai_api.OpenAIApi(FakeGateway(generative_target()))(scope, exchange.receive,
                                                                                          exchange.send))  # fmt: skip
        await asyncio.sleep(0.3)
        assert shared_redis.client().llen(request_queue_key(QUEUE)) == 1
        exchange.gone.set()
        await asyncio.wait_for(task, 5)
        return int(shared_redis.client().llen(request_queue_key(QUEUE)))

    assert asyncio.run(main()) == 0
    assert [r["status"] for r in sink.records] == [499]


def test_admission_is_a_fast_503_with_retry_after(settings):
    settings.GENERATION_MAX_QUEUED = 1
    shared_redis.client().lpush(request_queue_key(QUEUE), b"someone else's")
    exchange = post(FakeGateway(generative_target()), "/v1/completions", COMPLETION)
    assert exchange.status == 503 and int(exchange.headers["retry-after"]) >= 1
    assert "GENERATION_MAX_QUEUED" in orjson.loads(exchange.body)["error"]["message"]


def test_logprobs_reach_the_answer():
    exchange = post(FakeGateway(generative_target()), "/v1/completions", {**COMPLETION, "logprobs": 0},
                    FakeWorker(words))  # fmt: skip
    logprobs = orjson.loads(exchange.body)["choices"][0]["logprobs"]
    assert logprobs["token_logprobs"] == [-0.5, -0.5, -0.5] and logprobs["text_offset"] == [0, 3, 6]


@pytest.mark.parametrize(
    ("path", "body", "target", "status", "fragment"),
    [
        ("/v1/completions", {**COMPLETION, "model": "nope"}, None, 404, "Model 'nope' not found"),
        ("/v1/completions", COMPLETION, {"task": "fill-mask"}, 400, "is a fill-mask model"),
        ("/v1/completions", {**COMPLETION, "max_tokens": 101}, {}, 400, "over the maximum of 100 tokens"),
        ("/v1/chat/completions", {**CHAT, "n": 2}, {}, 400, "n=2 is not supported"),
        ("/v1/chat/completions", {**CHAT, "temperature": 3}, {}, 400, "temperature must be between 0 and 2"),
        ("/v1/chat/completions", {**CHAT, "top_p": 0}, {}, 400, "top_p must be above 0"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, {}, 400, "messages must be a non-empty list"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "tool", "content": "x"}]}, {}, 400, "unknown role"),
        ("/v1/chat/completions", b"{nope", {}, 400, "not valid JSON"),
        ("/v1/completions", {**COMPLETION, "prompt": "x" * 2_000_000}, {}, 413, "larger than the limit"),
        ("/v1/completions", COMPLETION, {"status": "validating"}, 503, "is validating, not ready"),
    ],
)  # fmt: skip
def test_bad_generation_requests_are_openai_errors_naming_the_problem(path, body, target, status, fragment, settings):
    settings.INFERENCE_MAX_BODY_BYTES = 1024 * 1024
    missing = NotFound("Model 'nope' not found.") if target is None else None
    gateway = FakeGateway(generative_target(**(target or {})), missing)
    exchange = post(gateway, path, body)
    assert exchange.status == status, exchange.body
    error = orjson.loads(exchange.body)["error"]
    assert fragment in error["message"], error
    assert set(error) == {"message", "type", "param", "code"}


def test_v2_infer_refuses_a_generative_model_and_points_to_v1():
    # Checked by Gateway.prediction before a place is taken and the body is read.
    with pytest.raises(InvalidInput, match="does not serve text-generation models; use POST /v1/completions"):
        FakeGateway(generative_target()).servable_check(generative_target())


def test_a_get_on_a_generation_path_is_a_405():
    exchange = Exchange(b"")
    scope = {"type": "http", "method": "GET", "path": "/v1/completions", "headers": []}
    asyncio.run(openai_api.OpenAIApi(FakeGateway(generative_target()))(scope, exchange.receive, exchange.send))
    assert exchange.status == 405


def test_the_chunks_and_answers_parse_as_openai_s_client_types():
    """The official client's models parse the chunks (a dropped or misnamed field would fail here)."""
    exchange = post(FakeGateway(generative_target()), "/v1/chat/completions", {**CHAT, "stream": True},
                    FakeWorker(words))  # fmt: skip
    for event in exchange.events()[:-1]:
        ChatCompletionChunk.model_validate(event)
    exchange = post(FakeGateway(generative_target()), "/v1/completions", {**COMPLETION, "logprobs": 1},
                    FakeWorker(words))  # fmt: skip
    Completion.model_validate(orjson.loads(exchange.body))
    assert np.isclose(sum(orjson.loads(exchange.body)["choices"][0]["logprobs"]["token_logprobs"]), -1.5)
