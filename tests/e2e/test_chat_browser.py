"""A person in Chromium chats with a tiny GPT-2 on its version page: the answer streams in as the
worker generates it, Stop ends it, a refused prompt is shown, and the model page then charts the
tokens used and the time to first token.

The page is served by the portal's ASGI app under uvicorn (the session's gateway), as in
production: the playground's endpoint is an async streaming view.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from django.core.files import File
from playwright.sync_api import expect

from accounts import services as token_services
from core import redis as shared_redis
from core.invalidation import INVALIDATE_CHANNEL
from inference import validation
from monitoring.models import MetricBucket, UsageBucket
from portal import text_models
from registry import services
from registry.models import ModelVersion, VersionStatus
from tests.e2e.conftest import login
from tests.e2e.test_text_browser import csp_violations
from tests.worker import METRICS_AUTH

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Records, at every DOM change of the conversation, the last answer's length and state: one
# record per batch of chunks the page applied (a network read), with its time.
WATCH = """() => {
  window.__answers = [];
  const list = document.getElementById("chat-messages");
  new MutationObserver(() => {
    const boxes = list.querySelectorAll(".chat-assistant");
    const box = boxes[boxes.length - 1];
    if (box) window.__answers.push({t: performance.now(), length: box.querySelector(".chat-text").textContent.length,
                                    state: box.dataset.state, chunks: Number(box.dataset.chunks)});
  }).observe(list, {subtree: true, childList: true, characterData: true, attributes: true});
}"""

# Clicks Stop (as a person would, but without a round trip to the test) once 3 chunks are shown.
STOP_AFTER_THREE_CHUNKS = """() => {
  const list = document.getElementById("chat-messages");
  const observer = new MutationObserver(() => {
    const boxes = list.querySelectorAll(".chat-assistant");
    const box = boxes[boxes.length - 1];
    if (box && Number(box.dataset.chunks) >= 3 && box.dataset.state === "streaming") {
      observer.disconnect();
      window.__stoppedAt = Number(box.dataset.chunks);
      document.getElementById("chat-stop").click();
    }
  });
  observer.observe(list, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def series(exposition: str, name: str, labels: dict[str, str]) -> list[float]:
    """The values of a metric's series whose labels include `labels` (in any order)."""
    values = []
    for line in exposition.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(key) == value for key, value in labels.items()):
                values.append(float(line.rsplit(" ", 1)[-1]))
    return values


@pytest.fixture(scope="module")
def gpt2_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight GPT-2 (with its chat template), zipped as a user would upload it."""
    root = tmp_path_factory.mktemp("chat-browser")
    return text_models.directory_zip(text_models.gpt2_save(root / "tiny-gpt2", size="tiny"), root / "tiny-gpt2.zip")


@pytest.fixture
def chat_version(owner: Any, gpt2_archive: Path, gateway_url: str) -> ModelVersion:
    """The tiny GPT-2, validated and loaded in the session's worker (its engine started)."""
    model = services.model_create(actor=owner, name="chatty", description="a tiny random GPT-2")
    with gpt2_archive.open("rb") as stream:
        version = services.version_upload(
            actor=owner, model=model, file=File(stream, name=gpt2_archive.name), filename=gpt2_archive.name,
            task="text-generation", enqueue=False,
        )  # fmt: skip
    status = validation.version_validate(version.pk)
    version.refresh_from_db()
    assert status == VersionStatus.READY, version.status_reason
    # The worker loads the model on its first request, which on a busy machine takes longer than
    # the tests' INFERENCE_TIMEOUT_SECONDS: ask until it answers, so the browser sees a warm engine.
    shared_redis.client().publish(INVALIDATE_CHANNEL, "test")
    secret = token_services.token_create(user=owner, name="warm-up")[1]
    body = {"model": f"chatty:{version.version}", "prompt": "Hi", "max_tokens": 1}
    deadline = time.monotonic() + 90
    while True:
        reply = requests.post(f"{gateway_url}/v1/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
        if reply.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert reply.status_code == 200, reply.text
    return version


@pytest.fixture
def portal_page(chromium: Any, gateway_url: str, owner: Any, settings: Any) -> Iterator[Any]:
    """A page on the portal served by uvicorn (the gateway process), with a worker behind it."""
    # The tests hash passwords with MD5 (fast), which the gateway process does not accept: the
    # owner's password is hashed again the way the portal's own settings check it.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    owner.set_password("owner-pass-123")
    owner.save(update_fields=["password"])
    # Earlier tests' rows are gone (flushed without signals): make the gateway forget them.
    shared_redis.client().publish(INVALIDATE_CHANNEL, "test")
    context = chromium.new_context(base_url=gateway_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    context.close()


def send(page: Any, text: str, *, temperature: str, max_tokens: str) -> None:
    page.fill("#chat-temperature", temperature)
    page.fill("#chat-max-tokens", max_tokens)
    page.fill("#chat-input", text)
    page.click("#chat-send")


def test_the_playground_streams_the_answer_as_it_is_generated_and_the_model_page_charts_it(
    portal_page, owner, chat_version, gateway_url
):
    page = portal_page
    refused = csp_violations(page)
    login(page, "olivia", "owner-pass-123")
    page.goto(f"/models/chatty/versions/{chat_version.version}/")
    expect(page.locator("#chat")).to_be_visible()
    expect(page.locator("#snippet-openai")).to_contain_text("stream=True")

    page.evaluate(WATCH)
    send(page, "Hello there, who are you?", temperature="0", max_tokens="48")
    answer = page.locator(".chat-message.chat-assistant").last
    expect(answer).to_have_attribute("data-state", "done", timeout=60_000)
    expect(page.locator("#chat-send")).to_be_enabled()
    expect(page.locator("#chat-stop")).to_be_hidden()

    records = page.evaluate("window.__answers")
    final = answer.locator(".chat-text").inner_text()
    streaming = [r for r in records if r["state"] == "streaming" and r["length"] > 0]
    # The text grew while it streamed: at least two partial states, each shorter than the answer.
    partial = sorted({r["length"] for r in streaming})
    assert len(partial) >= 2 and partial[-1] <= len(final), records
    assert streaming[-1]["t"] > streaming[0]["t"], records
    assert int(answer.get_attribute("data-chunks")) >= 2
    expect(page.locator("#chat-timing")).to_contain_text("first token")
    expect(page.locator("#chat-timing")).to_contain_text("finish: ")

    # At temperature 0 the page shows exactly what /v1/chat/completions answers in one piece.
    secret = token_services.token_create(user=owner, name="chat-check")[1]
    body = {"model": f"chatty:{chat_version.version}", "temperature": 0, "max_tokens": 48,
            "messages": [{"role": "user", "content": "Hello there, who are you?"}]}  # fmt: skip
    reply = requests.post(f"{gateway_url}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                          json=body, timeout=60)  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == final

    # The conversation goes on: the next request carries both turns, and a new answer streams.
    send(page, "Tell me more.", temperature="0.8", max_tokens="16")
    expect(page.locator(".chat-message")).to_have_count(4)
    expect(page.locator(".chat-message.chat-assistant").last).to_have_attribute("data-state", "done", timeout=60_000)
    assert refused == []

    # The model page then charts the tokens used and the answers' timing. The gateway flushes
    # its aggregates every second (METRICS_FLUSH_SECONDS=1 in the tests).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        timed = MetricBucket.objects.filter(version=chat_version, generated__gt=0, source="native").exists()
        if timed and UsageBucket.objects.filter(version=chat_version, completion_tokens__gt=0).exists():
            break
        time.sleep(0.25)
    else:
        pytest.fail("the playground's answers never reached the aggregates")
    page.goto("/models/chatty/")
    for key in ("tokens", "ttft", "inter_token", "output_speed"):
        expect(page.locator(f"#chart-{key}")).to_have_attribute("data-has-data", "true")

    # Prometheus (summed over the gateway's and the worker's processes): the answers' timing (each
    # process moves its samples to Prometheus every DRAIN_SECONDS), and the worker's engine gauges
    # (reported every 2 s).
    labels = {"model": "chatty", "version": str(chat_version.version)}
    deadline = time.monotonic() + 15
    while True:
        text = requests.get(f"{gateway_url}/metrics", headers=METRICS_AUTH, timeout=10).text
        budget = series(text, "maas_generation_kv_cache_budget_tokens", labels)
        answers = sum(series(text, "maas_time_to_first_token_seconds_count", {**labels, "source": "native"}))
        if (budget and answers >= 2) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert budget and max(budget) > 0, text
    assert answers >= 2, text
    assert sum(series(text, "maas_inter_token_latency_seconds_count", {**labels, "source": "native"})) >= 2
    assert series(text, "maas_generation_running_sequences", labels)


def test_stop_ends_the_stream_a_refused_prompt_is_shown_and_the_engine_keeps_serving(
    portal_page, chat_version, owner, gateway_url
):
    prompt = "Write a very long story."
    # Greedy, so that the answer cannot end early: sampled, the random model sometimes drew its
    # end-of-text token before Stop was clicked, and the answer was `done`. This one runs 400 tokens.
    secret = token_services.token_create(user=owner, name="greedy-check")[1]
    body = {"model": f"chatty:{chat_version.version}", "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": 400}  # fmt: skip
    whole = requests.post(f"{gateway_url}/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert whole.status_code == 200 and whole.json()["choices"][0]["finish_reason"] == "length", whole.text
    page = portal_page
    login(page, "olivia", "owner-pass-123")
    page.goto(f"/models/chatty/versions/{chat_version.version}/")
    page.evaluate(STOP_AFTER_THREE_CHUNKS)
    send(page, prompt, temperature="0", max_tokens="400")
    answer = page.locator(".chat-message.chat-assistant").last
    expect(answer).to_have_attribute("data-state", "stopped", timeout=60_000)
    expect(page.locator("#chat-send")).to_be_enabled()
    expect(page.locator("#chat-stop")).to_be_hidden()
    expect(page.locator("#chat-timing")).to_contain_text("stopped")
    stopped_at = page.evaluate("window.__stoppedAt")
    shown = int(answer.get_attribute("data-chunks"))
    # Nothing arrives after Stop (what was shown stays), far from the 400 tokens asked for.
    time.sleep(1.0)
    assert int(answer.get_attribute("data-chunks")) == shown and stopped_at <= shown < 400
    assert answer.locator(".chat-text").inner_text()

    # A prompt the model refuses (over its context) is shown, and given back to edit.
    long_text = "tell me everything " * 400  # far over the tiny model's 512-token context
    send(page, long_text, temperature="0", max_tokens="16")
    expect(page.locator("#chat-error")).to_be_visible()
    expect(page.locator("#chat-error")).to_contain_text("context")
    expect(page.locator(".chat-message")).to_have_count(2)  # the stopped exchange only
    assert page.input_value("#chat-input") == long_text.strip()
    expect(page.locator("#chat-send")).to_be_enabled()

    # The engine serves the next message (the stopped sequence left the batch).
    send(page, "A short one now.", temperature="0", max_tokens="8")
    expect(page.locator(".chat-message.chat-assistant").last).to_have_attribute("data-state", "done", timeout=60_000)
    expect(page.locator("#chat-error")).to_be_hidden()


def test_a_model_uploaded_in_the_browser_streams_a_chat_to_the_openai_client_with_a_scoped_token(
    portal_page, owner, gpt2_archive, gateway_url
):
    """The issue's finish line: browser upload → validated on the worker → the official client streams."""
    services.model_create(actor=owner, name="uploaded-chat", description="uploaded through the page")
    page = portal_page
    login(page, "olivia", "owner-pass-123")
    page.goto("/models/uploaded-chat/upload/")
    page.set_input_files("input[name=file]", str(gpt2_archive))
    page.select_option("select[name=task]", "text-generation")
    page.click("#upload-submit")
    page.wait_for_url(re.compile(r"/models/uploaded-chat/versions/1/$"))
    expect(page.locator("h1 .status")).to_have_text("ready", timeout=90_000)
    expect(page.locator("#chat")).to_be_visible()  # the playground is offered on a generative version

    # A token that may only predict, and only with this model.
    secret = token_services.token_create(user=owner, name="chat-app", scopes=["predict"], models=["uploaded-chat"])[1]
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=secret, max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "Tell me about the portal."}]
    deadline = time.monotonic() + 90
    while True:  # the worker loads the model on its first request (longer than the tests' timeout)
        try:
            answer = client.chat.completions.create(
                model="uploaded-chat:1", messages=messages, max_tokens=12, temperature=0
            )
            break
        except openai.APIStatusError as exc:
            if exc.status_code not in (503, 504) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    stream = client.chat.completions.create(
        model="uploaded-chat:1", messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert len(chunks) > 2 and streamed == answer.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
