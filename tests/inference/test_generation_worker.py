"""The worker's generation loop against a real Redis (a private one) and a tiny random GPT-2.

The loop is driven cycle by cycle (`cycle(block=False)`: one step of every engine, then one
Redis round trip) so that what each step sends can be asserted; one test runs it as the
thread the worker starts. Models come from a stand-in for the model cache holding real
runtimes loaded from `save_pretrained` directories (the database is not needed here).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

from core import redis as shared_redis
from core.embedded import embedded_redis_start
from inference import serving, telemetry
from inference.cache import LoadedModel, ModelUnavailable
from inference.generation import worker as generation_worker
from inference.generation.messages import (
    Accepted,
    GenerateRequest,
    Output,
    Refused,
    StepEvents,
    cancel_key,
    request_queue_key,
    stream_key,
)
from inference.generation.worker import GenerationLoop
from inference.runtimes import HuggingFaceRuntime
from portal.text_models import bert_save, gpt2_save, single_threaded
from registry.text_tasks import TextTask, task_signature

CPU = torch.device("cpu")
GPT = 1
PLAIN_GPT = 2  # the same model, its tokenizer without a chat template
BERT = 3
PROMPTS = [
    "Paris is",
    "The model answers questions about the portal",
    "Hi",
    "日本語のテキスト",
    "Write a short poem about the sea and the wind. Write a short poem about",
    "Café crème",
]
MAX_TOKENS = 12


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # As the worker processes run (OMP_NUM_THREADS=1): a second OpenMP thread waiting for a busy
    # core made a tiny model's step 20x slower here (77 ms against 4 ms, measured).
    with single_threaded():
        yield


@pytest.fixture(scope="module")
def _redis_socket() -> Iterator[Path]:
    # A short directory: unix socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="maas-gen-") as directory:
        process = embedded_redis_start(Path(directory) / "redis.sock")
        assert process is not None, "a fresh directory cannot already hold a Redis"
        try:
            yield Path(directory) / "redis.sock"
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
def client(_redis_socket: Path, settings: Any) -> Iterator[redis.Redis]:
    settings.INFERENCE_REDIS_URL = f"redis+socket://{_redis_socket}"
    yield shared_redis.client()
    shared_redis.reset()


def _loaded(version_id: int, runtime: HuggingFaceRuntime, name: str) -> LoadedModel:
    return LoadedModel(
        version_id=version_id, model_name=name, version=1, signature=task_signature(runtime.task, {}),
        runtime=runtime, size_bytes=runtime.memory_bytes(), batching=True, max_batch_size=8,
    )  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, LoadedModel]:
    root = Path(tmp_path_factory.mktemp("gen-worker"))
    gpt = gpt2_save(root / "gpt2", size="tiny")
    plain = HuggingFaceRuntime.load(gpt, CPU, task=TextTask.TEXT_GENERATION)
    plain.tokenizer.chat_template = None
    bert = HuggingFaceRuntime.load(bert_save(root / "bert", TextTask.FILL_MASK), CPU, task=TextTask.FILL_MASK)
    return {
        GPT: _loaded(GPT, HuggingFaceRuntime.load(gpt, CPU, task=TextTask.TEXT_GENERATION), "gpt"),
        PLAIN_GPT: _loaded(PLAIN_GPT, plain, "plain-gpt"),
        BERT: _loaded(BERT, bert, "bert"),
    }


class StandInCache:
    """What the loop asks of the model cache: get (ModelUnavailable for an unknown id) and loaded."""

    def __init__(self, models: dict[int, LoadedModel]) -> None:
        self.models = dict(models)

    def get(self, version_id: int) -> LoadedModel:
        if version_id not in self.models:
            raise ModelUnavailable(f"version {version_id} does not exist")
        return self.models[version_id]

    def loaded(self) -> list[LoadedModel]:
        return list(self.models.values())


@pytest.fixture
def cache(models: dict[int, LoadedModel], monkeypatch: pytest.MonkeyPatch) -> StandInCache:
    stand_in = StandInCache(models)
    monkeypatch.setattr(generation_worker, "model_cache", lambda: stand_in)
    return stand_in


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[telemetry.GenerationLoad]]]:
    """The loop's engine load reports (telemetry.generation_load), kept here instead of a sink."""
    kept: list[tuple[str, list[telemetry.GenerationLoad]]] = []
    monkeypatch.setattr(telemetry, "generation_load", lambda worker, loads: kept.append((worker, loads)))
    return kept


@pytest.fixture
def loop(client: redis.Redis, cache: StandInCache, reports: list[Any]) -> Iterator[GenerationLoop]:
    queue = f"test-gen-{uuid.uuid4().hex[:8]}"
    made = GenerationLoop([queue], f"test-worker-{uuid.uuid4().hex[:8]}")
    yield made
    client.delete(made.keys[0], made.cancel_key)


@pytest.fixture(scope="module")
def reference(models: dict[int, LoadedModel]) -> dict[str, list[int]]:
    """`generate(do_sample=False)` of each prompt alone: the tokens the loop must stream."""
    runtime = models[GPT].runtime
    out = {}
    for prompt in PROMPTS:
        ids = runtime.tokenizer(prompt, return_tensors="pt")["input_ids"]  # type: ignore[attr-defined]
        generated = runtime.module.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_TOKENS
        )
        out[prompt] = generated[0, ids.shape[1] :].tolist()
    return out


def send(
    client: redis.Redis,
    loop: GenerationLoop,
    gateway: str,
    *,
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
    version_id: int = GPT,
    deadline: float = 60.0,
    **params: Any,
) -> str:
    """LPUSH a request as a gateway does; its id."""
    params.setdefault("max_tokens", MAX_TOKENS)
    params.setdefault("temperature", 0.0)
    request = GenerateRequest(
        id=uuid.uuid4().hex, reply_to=stream_key(gateway), version_id=version_id, sent_at=time.time(),
        deadline=time.time() + deadline, prompt=prompt, messages=messages, params=params,
    )  # fmt: skip
    client.lpush(request_queue_key(loop.queues[0]), request.encode())
    return request.id


def received(client: redis.Redis, gateway: str) -> list[StepEvents]:
    """Every StepEvents pushed for a gateway so far, oldest first (LPUSH then RPOP)."""
    raw = client.rpop(stream_key(gateway), 10_000) or []
    return [StepEvents.decode(message) for message in raw]


def run_until_idle(loop: GenerationLoop, limit: int = 200) -> int:
    """Cycle until nothing is left to do; the cycles it took."""
    for cycles in range(1, limit + 1):
        loop.cycle(block=False)
        if not loop.busy() and not loop.live:
            return cycles
    raise AssertionError(f"the loop still had work after {limit} cycles")


def by_request(messages: list[StepEvents]) -> dict[str, list[Any]]:
    events: dict[str, list[Any]] = {}
    for message in messages:
        for event in message.events:
            events.setdefault(event.request_id, []).append(event)
    return events


def tokens_of(events: list[Any]) -> list[int]:
    return [token for event in events if isinstance(event, Output) for token in event.token_ids]


def gateway_name() -> str:
    return f"test-gw-{uuid.uuid4().hex[:8]}"


# --- correctness ---------------------------------------------------------------------------------


def test_greedy_stream_equals_generate_at_batch_one(client, loop, models, reference):
    gateway = gateway_name()
    tokenizer = models[GPT].runtime.tokenizer  # type: ignore[attr-defined]
    for prompt in PROMPTS:
        request_id = send(client, loop, gateway, prompt=prompt)
        run_until_idle(loop)
        events = by_request(received(client, gateway))[request_id]
        assert isinstance(events[0], Accepted) and events[0].prompt_tokens == len(tokenizer(prompt)["input_ids"])
        assert all(isinstance(event, Output) for event in events[1:])
        assert tokens_of(events) == reference[prompt]
        assert "".join(event.text for event in events[1:]) == tokenizer.decode(reference[prompt])
        assert events[-1].finish_reason in ("stop", "length") and events[-1].completion_tokens == len(reference[prompt])
        assert all(event.finish_reason is None for event in events[1:-1])


def test_greedy_streams_equal_generate_with_requests_joining_mid_flight(client, loop, reference):
    gateway = gateway_name()
    ids = {send(client, loop, gateway, prompt=prompt): prompt for prompt in PROMPTS[:2]}
    for cycle in range(1, 60):
        loop.cycle(block=False)
        if cycle == 3:
            ids |= {send(client, loop, gateway, prompt=prompt): prompt for prompt in PROMPTS[2:4]}
        if cycle == 6:
            ids |= {send(client, loop, gateway, prompt=prompt): prompt for prompt in PROMPTS[4:]}
        if cycle > 6 and not loop.busy() and not loop.live:
            break
    messages = received(client, gateway)
    events = by_request(messages)
    assert set(events) == set(ids)
    for request_id, prompt in ids.items():
        assert tokens_of(events[request_id]) == reference[prompt], prompt
    # They shared the batch: more than two sequences decoded in one step.
    assert max(sum(isinstance(event, Output) for event in message.events) for message in messages) > 2


def test_chat_messages_go_through_the_chat_template(client, loop, models):
    gateway = gateway_name()
    runtime = models[GPT].runtime
    messages = [{"role": "user", "content": "Write a short poem"}]
    request_id = send(client, loop, gateway, messages=messages)
    run_until_idle(loop)
    events = by_request(received(client, gateway))[request_id]
    text = runtime.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)  # type: ignore[attr-defined]
    ids = runtime.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # type: ignore[attr-defined]
    expected = runtime.module.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=MAX_TOKENS)[0, ids.shape[1] :].tolist()  # fmt: skip
    assert events[0] == Accepted(request_id, ids.shape[1], events[0].queue_ms)
    assert tokens_of(events) == expected


# --- one round trip per step -------------------------------------------------------------------------


def test_each_step_sends_one_message_per_gateway_with_every_sequence_in_it(client, loop, monkeypatch):
    first, second = gateway_name(), gateway_name()
    mine = {first: [send(client, loop, first, prompt=p) for p in PROMPTS[:3]],
            second: [send(client, loop, second, prompt=p) for p in PROMPTS[3:5]]}  # fmt: skip
    round_trips = 0
    execute = redis.client.Pipeline.execute

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal round_trips
        round_trips += 1
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counted)
    cycles = run_until_idle(loop)
    assert round_trips == cycles  # one Redis round trip per step, whatever the number of sequences
    for gateway, request_ids in mine.items():
        messages = received(client, gateway)
        # Accepted rides with the first step's outputs; every step after has one message.
        assert 2 <= len(messages) <= cycles
        assert all(message.worker == loop.identity for message in messages)
        finished: set[str] = set()
        for message in messages:
            outputs = [event for event in message.events if isinstance(event, Output)]
            assert {event.request_id for event in outputs} == set(request_ids) - finished
            assert len(outputs) == len({event.request_id for event in outputs})
            finished |= {event.request_id for event in outputs if event.finish_reason}
        assert finished == set(request_ids)


def test_the_loop_takes_only_as_many_requests_as_it_has_room_for(client, loop):
    loop.engine_options["max_sequences"] = 2
    gateway = gateway_name()
    for prompt in PROMPTS:
        send(client, loop, gateway, prompt=prompt)
    loop.cycle(block=False)
    assert len(loop.live) == 2
    assert client.llen(loop.keys[0]) == len(PROMPTS) - 2  # the backlog stays in Redis for other workers
    run_until_idle(loop)
    assert client.llen(loop.keys[0]) == 0
    events = by_request(received(client, gateway))
    assert len(events) == len(PROMPTS) and all(group[-1].finish_reason for group in events.values())


# --- cancellation, deadlines, refusals ---------------------------------------------------------------


def test_a_cancelled_request_leaves_within_one_step(client, loop):
    gateway = gateway_name()
    request_id = send(client, loop, gateway, prompt=PROMPTS[1], max_tokens=200)
    other = send(client, loop, gateway, prompt=PROMPTS[0], max_tokens=30)
    for _ in range(4):
        loop.cycle(block=False)
    client.lpush(cancel_key(loop.identity), request_id)
    loop.cycle(block=False)  # its round trip pops the cancellation
    loop.cycle(block=False)  # the next step drops the sequence
    events = by_request(received(client, gateway))
    assert events[request_id][-1].finish_reason == "cancelled"
    assert request_id not in loop.live and events[request_id][-1].completion_tokens < 10
    assert other in loop.live  # the batch goes on without it
    run_until_idle(loop)
    assert by_request(received(client, gateway))[other][-1].finish_reason in ("stop", "length")


def test_a_request_past_its_deadline_is_refused_504(client, loop):
    gateway = gateway_name()
    request_id = send(client, loop, gateway, prompt="Hi", deadline=-1)
    run_until_idle(loop)
    (event,) = by_request(received(client, gateway))[request_id]
    assert event == Refused(request_id, 504, "The request waited in the queue past its deadline.")


@pytest.mark.parametrize(
    ("fields", "status", "fragments"),
    [
        ({"messages": [{"role": "user", "content": "Hi"}], "version_id": PLAIN_GPT}, 400,
         ("'plain-gpt' v1 has no chat template", "/v1/completions")),
        ({"prompt": "word " * 150, "max_tokens": 100}, 400,
         ("tokens and max_tokens is 100", "over the model's context of 512")),
        ({"prompt": ""}, 400, ("the prompt is empty",)),
        ({"prompt": "Hi", "temperature": 5.0}, 400, ("temperature",)),
        ({"prompt": "Hi", "version_id": BERT}, 400, ("'bert' v1 is a fill-mask model", "not a text-generation")),
        ({"prompt": "Hi", "version_id": 99}, 503, ("cannot serve the model", "version 99 does not exist")),
    ],
)  # fmt: skip
def test_requests_the_model_cannot_run_are_refused_with_a_status_naming_the_problem(
    client, loop, fields, status, fragments
):
    gateway = gateway_name()
    request_id = send(client, loop, gateway, **fields)
    run_until_idle(loop)
    (event,) = by_request(received(client, gateway))[request_id]
    assert isinstance(event, Refused) and event.status == status
    for fragment in fragments:
        assert fragment in event.message
    assert not loop.live


def test_a_full_engine_refuses_503(client, loop):
    loop.engine_options["max_waiting"] = 0
    gateway = gateway_name()
    request_id = send(client, loop, gateway, prompt="Hi")
    run_until_idle(loop)
    (event,) = by_request(received(client, gateway))[request_id]
    assert isinstance(event, Refused) and event.status == 503 and "No room" in event.message


def test_malformed_requests_are_dropped_and_logged(client, loop, caplog):
    gateway = gateway_name()
    client.lpush(loop.keys[0], b"\x93garbage")
    request_id = send(client, loop, gateway, prompt="Hi", max_tokens=2)
    run_until_idle(loop)
    assert "dropped a malformed generation request" in caplog.text
    assert by_request(received(client, gateway))[request_id][-1].finish_reason in ("stop", "length")


def test_an_engine_that_fails_ends_its_sequences_500_and_is_dropped(client, loop):
    gateway = gateway_name()
    request_id = send(client, loop, gateway, prompt="Hi", max_tokens=50)
    loop.cycle(block=False)
    loop.cycle(block=False)

    def broken() -> list[Any]:
        raise RuntimeError("CUDA error: out of memory")

    loop.engines[GPT].engine.step = broken  # type: ignore[method-assign]
    run_until_idle(loop)
    event = by_request(received(client, gateway))[request_id][-1]
    assert isinstance(event, Refused) and event.status == 500 and "out of memory" in event.message
    assert GPT not in loop.engines and not loop.live
    # The next request gets a fresh engine.
    again = send(client, loop, gateway, prompt="Hi", max_tokens=2)
    run_until_idle(loop)
    assert by_request(received(client, gateway))[again][-1].finish_reason in ("stop", "length")


def test_a_request_whose_admission_fails_unexpectedly_is_refused_500_and_the_others_served(client, loop, cache):
    class Exploding:
        def get(self, version_id: int) -> LoadedModel:
            if version_id == 77:
                raise RuntimeError("warm-up crashed")
            return cache.get(version_id)

        def loaded(self) -> list[LoadedModel]:
            return cache.loaded()

    gateway = gateway_name()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generation_worker, "model_cache", Exploding)
        bad = send(client, loop, gateway, prompt="Hi", version_id=77)
        good = send(client, loop, gateway, prompt="Hi", max_tokens=2)
        run_until_idle(loop)
    events = by_request(received(client, gateway))
    assert events[bad] == [Refused(bad, 500, "The worker could not start the request: RuntimeError: warm-up crashed")]
    assert events[good][-1].finish_reason in ("stop", "length")


def test_a_stopping_worker_ends_live_sequences_503(client, loop):
    gateway = gateway_name()
    ids = [send(client, loop, gateway, prompt=p, max_tokens=100) for p in PROMPTS[:3]]
    for _ in range(3):
        loop.cycle(block=False)
    loop.shutdown()
    events = by_request(received(client, gateway))
    for request_id in ids:
        assert events[request_id][-1] == Refused(request_id, 503, "The worker generating this request is stopping.")
    assert not loop.live and not loop.engines


# --- as a thread, telemetry ------------------------------------------------------------------------------


def test_the_thread_serves_requests_and_reports_its_engines(client, loop, monkeypatch, reference, reports):
    monkeypatch.setattr(generation_worker, "HEARTBEAT_SECONDS", 0.05)
    gateway = gateway_name()
    loop.start()
    try:
        request_id = send(client, loop, gateway, prompt=PROMPTS[0])
        events: list[Any] = []
        deadline = time.monotonic() + 30
        while not (events and getattr(events[-1], "finish_reason", None)) and time.monotonic() < deadline:
            item = client.brpop([stream_key(gateway)], timeout=1)
            if item is not None:
                events += [e for e in StepEvents.decode(item[1]).events if e.request_id == request_id]
        assert tokens_of(events) == reference[PROMPTS[0]]
        time.sleep(0.2)
    finally:
        loop.stopping.set()
        loop.join(timeout=10)
    assert not loop.is_alive()
    assert all(worker == loop.identity for worker, _ in reports)
    engines = [load for _, loads in reports for load in loads]
    assert engines and {(load.version_id, load.model, load.budget_tokens) for load in engines} == {
        (GPT, "gpt", loop.engine_options["max_tokens"])
    }


def test_an_idle_engine_whose_model_left_the_cache_is_dropped(client, loop, cache, monkeypatch):
    monkeypatch.setattr(generation_worker, "HEARTBEAT_SECONDS", 0.0)
    gateway = gateway_name()
    send(client, loop, gateway, prompt="Hi", max_tokens=2)
    run_until_idle(loop)
    assert GPT in loop.engines
    del cache.models[GPT]
    loop.cycle(block=False)
    assert GPT not in loop.engines


def test_the_worker_starts_the_generation_loop_beside_the_serving_loop_and_stopping_ends_streams_503(
    client, cache, reports
):
    queue = f"test-gen-{uuid.uuid4().hex[:8]}"
    serving.serving_start([queue])
    try:
        generation = serving._generation
        assert generation is not None and generation.is_alive() and generation.queues == [queue]
        gateway = gateway_name()
        request = GenerateRequest(
            id=uuid.uuid4().hex, reply_to=stream_key(gateway), version_id=GPT, sent_at=time.time(),
            deadline=time.time() + 60, prompt="Paris is", messages=None, params={"max_tokens": 400, "temperature": 0.0},
        )  # fmt: skip
        client.lpush(request_queue_key(queue), request.encode())
        first = StepEvents.decode(client.brpop([stream_key(gateway)], timeout=30)[1])
        assert first.worker == generation.identity and isinstance(first.events[0], Accepted)
    finally:
        serving.serving_stop()
    assert not generation.is_alive() and serving._generation is None
    last = received(client, gateway)[-1].events[-1]
    assert last == Refused(request.id, 503, "The worker generating this request is stopping.")
