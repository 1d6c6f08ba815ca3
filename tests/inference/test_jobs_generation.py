"""Batch generation jobs: the prompts file's checks, the engine run over it in row order, and
jobs on a real (tiny, random) GPT-2 version: submitted, run by the task in-process, refused."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import InvalidInput
from inference import completions, jobs, tasks, validation
from inference.completions import CompletionRows, Defaults, prompts_dump, prompts_load, prompts_read
from inference.generation import Engine
from inference.models import BatchJob, JobStatus
from inference.runs import loop
from inference.runs.loop import RunStopped
from monitoring import metrics
from portal.text_models import directory_zip, gpt2_save
from registry import services
from registry.artifacts import artifact_storage
from registry.models import ModelVersion, VersionStatus
from registry.text_tasks import TextTask
from tests.inference.conftest import JOBS, result_lines, run, stored_job_files

DEFAULTS = Defaults(max_tokens=16, max_tokens_limit=64, temperature=1.0)
PROMPTS = ["Paris is", "The portal serves", "Hi", "def add(a, b):", "Rome is the capital", "Once upon"]


def lines(*items: Any) -> io.BytesIO:
    return io.BytesIO(
        b"".join((item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n" for item in items)
    )


def refused(*items: Any, defaults: Defaults = DEFAULTS) -> str:
    with pytest.raises(InvalidInput) as caught:
        prompts_read(lines(*items), defaults)
    return caught.value.message


# --- the file's checks -----------------------------------------------------------------------


def test_prompts_and_chats_are_stored_with_every_setting_resolved():
    requests = prompts_read(
        lines(
            {"prompt": "Paris is"},
            b"   ",
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
             "temperature": 0, "max_tokens": 8, "stop": "\n"},
            {"prompt": "x", "top_p": 0.5, "top_k": 3, "seed": 7, "stop": ["a", "b"]},
        ),
        DEFAULTS,
    )  # fmt: skip
    assert requests == [
        {"prompt": "Paris is",
         "params": {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": None, "stop": []}},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "params": {"max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": None, "stop": ["\n"]}},
        {"prompt": "x",
         "params": {"max_tokens": 16, "temperature": 1.0, "top_p": 0.5, "top_k": 3, "seed": 7, "stop": ["a", "b"]}},
    ]  # fmt: skip
    # The stored form reads back the same.
    assert prompts_load(io.BytesIO(prompts_dump(requests))) == requests


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"prompt": "a",}', "line 2 is not valid JSON: Expecting property name"),
        (["a"], "line 2: must be a JSON object with 'prompt' or 'messages', not list"),
        ({"prompt": "a", "n": 2}, "line 2: unknown key 'n'"),
        ({"prompt": "a", "messages": []}, "line 2: needs exactly one of 'prompt'"),
        ({"temperature": 0}, "line 2: needs exactly one of 'prompt'"),
        ({"prompt": ""}, "line 2: 'prompt' must be a non-empty string"),
        ({"messages": []}, "line 2: 'messages' must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 'line 2: message 0 has an unknown role "robot"'),
        ({"messages": [{"role": "user"}]}, "line 2: message 0 must be an object with exactly the keys"),
        ({"messages": [{"role": "user", "content": 3}]}, "line 2: message 0's content must be a non-empty string"),
        ({"prompt": "a", "temperature": 3}, "line 2: temperature must be between 0 and 2, not 3.0"),
        ({"prompt": "a", "temperature": "hot"}, "line 2: 'temperature' must be a number, not \"hot\""),
        ({"prompt": "a", "top_p": 0}, "line 2: top_p must be above 0"),
        ({"prompt": "a", "top_k": -1}, "line 2: top_k must be a non-negative integer"),
        ({"prompt": "a", "seed": 1.5}, "line 2: 'seed' must be an integer, not 1.5"),
        ({"prompt": "a", "max_tokens": 65}, "line 2: 'max_tokens' must be from 1 to 64 for this model, not 65"),
        ({"prompt": "a", "max_tokens": True}, "line 2: 'max_tokens' must be an integer, not true"),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "line 2: 'stop' takes at most 4 strings"),
        ({"prompt": "a", "stop": [""]}, "line 2: 'stop' must be a non-empty string or a list of them"),
        (b'{"prompt": "a", "temperature": NaN}', "line 2: 'temperature' must be a number, not NaN"),
        (b'{"prompt": "\\ud800"}', "line 2: 'prompt' holds a lone surrogate"),
        (b'{"prompt": "a", "stop": "\\udfff"}', "line 2: 'stop' holds a lone surrogate"),
        (b'{"prompt": "\xff"}', "line 2 is not valid JSON: 'utf-8' codec can't decode"),
    ],
)
def test_a_bad_line_is_refused_naming_its_line_number(line, expected):
    message = refused({"prompt": "fine"}, line, {"prompt": "fine"})
    assert message.startswith("The prompts file has errors: ")
    assert expected in message


def test_several_bad_lines_are_named_together_up_to_a_few():
    message = refused(
        {"prompt": "ok"}, {"prompt": 1}, b"{", {"prompt": "ok"}, {"messages": [{"role": "x", "content": "y"}]}
    )
    assert "line 2:" in message and "line 3 is not valid JSON" in message and "line 5:" in message
    many = refused(*[{"prompt": ""}] * 20)
    assert many.count("line ") == completions.MAX_PROBLEMS and "maybe more" in many


def test_an_empty_file_and_too_many_prompts_are_refused(monkeypatch):
    assert "no rows" in refused(b"", b"  ")
    monkeypatch.setattr(completions, "MAX_PROMPTS", 3)
    assert "more than 3 prompts" in refused(*[{"prompt": "a"}] * 4)
    assert len(prompts_read(lines(*[{"prompt": "a"}] * 3), DEFAULTS)) == 3


# --- the engine run over the rows -----------------------------------------------------------


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gpt2_save(Path(tmp_path_factory.mktemp("gpt2")) / "tiny", size="tiny")


@pytest.fixture(scope="module")
def lm(gpt2_dir: Path) -> tuple[Any, Any]:
    return AutoModelForCausalLM.from_pretrained(gpt2_dir).eval(), AutoTokenizer.from_pretrained(gpt2_dir)


def greedy(model: Any, tokenizer: Any, ids: list[int], max_tokens: int) -> str:
    """What in-process generate(do_sample=False) continues `ids` with, decoded up to its end-of-sequence."""
    tensor = torch.tensor([ids])
    out = model.generate(tensor, attention_mask=torch.ones_like(tensor), do_sample=False, max_new_tokens=max_tokens)
    new = out[0, len(ids) :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new)


def requests_of(*items: Any) -> list[dict[str, Any]]:
    return prompts_read(lines(*items), DEFAULTS)


def test_rows_come_back_in_order_and_greedy_ones_equal_generate(lm):
    model, tokenizer = lm
    requests = requests_of(*[{"prompt": p, "temperature": 0, "max_tokens": 4 + 3 * i} for i, p in enumerate(PROMPTS)])
    engine = Engine(model, tokenizer, max_sequences=3)
    rows = CompletionRows(engine, requests, lookahead=2)
    got = rows.rows(0, 2) + rows.rows(2, 5) + rows.rows(5, 6)
    assert [line["index"] for line in got] == list(range(6))
    for i, (prompt, line) in enumerate(zip(PROMPTS, got, strict=True)):
        ids = tokenizer(prompt)["input_ids"]
        assert line["completion"] == greedy(model, tokenizer, ids, 4 + 3 * i), prompt
        assert line["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 4 + 3 * i}
        assert line["finish_reason"] == "length"
    assert not engine.has_work() and not rows.flights and not rows.done
    # Later rows joined the running batch: fewer steps than running the rows one after another.
    assert rows.steps < sum(4 + 3 * i for i in range(6))


def test_a_chat_line_runs_through_the_chat_template(lm):
    model, tokenizer = lm
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    (line,) = CompletionRows(Engine(model, tokenizer), requests_of({"messages": messages, "temperature": 0})).rows(0, 1)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert line["completion"] == greedy(model, tokenizer, ids, DEFAULTS.max_tokens)
    assert line["usage"]["prompt_tokens"] == len(ids)


def test_a_line_that_cannot_run_gets_an_error_line_and_the_others_run(lm):
    model, tokenizer = lm
    context = model.config.max_position_embeddings
    requests = requests_of(
        {"prompt": "Paris is", "temperature": 0},
        {"prompt": "word " * context},
        {"prompt": "Hi", "max_tokens": 8, "stop": ["a", "e", "o", " "]},
    )
    got = CompletionRows(Engine(model, tokenizer), requests).rows(0, 3)
    assert got[1]["index"] == 1 and set(got[1]) == {"index", "error"}
    assert "over the model's context" in got[1]["error"]["message"]
    assert got[0]["completion"] == greedy(model, tokenizer, tokenizer("Paris is")["input_ids"], DEFAULTS.max_tokens)
    assert got[2]["usage"]["completion_tokens"] >= 1 and not any(c in got[2]["completion"] for c in "aeo ")


def test_chat_lines_on_a_model_without_a_chat_template_get_an_error_line(lm):
    model, tokenizer = lm
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        got = CompletionRows(Engine(model, tokenizer), requests_of(
            {"messages": [{"role": "user", "content": "Hi"}]}, {"prompt": "Hi", "max_tokens": 2},
        )).rows(0, 2)  # fmt: skip
    finally:
        tokenizer.chat_template = template
    assert got[0] == {
        "index": 0,
        "error": {"message": "this model has no chat template; send a 'prompt' instead of 'messages'"},
    }
    assert got[1]["usage"]["completion_tokens"] == 2


def test_seeded_sampled_lines_repeat_whatever_shares_their_batch(lm):
    model, tokenizer = lm
    line = {"prompt": "Once upon", "temperature": 0.9, "top_p": 0.9, "seed": 11, "max_tokens": 12}
    alone = CompletionRows(Engine(model, tokenizer), requests_of(line)).rows(0, 1)[0]
    crowd = requests_of(*[{"prompt": p, "max_tokens": 10} for p in PROMPTS], line)
    shared = CompletionRows(Engine(model, tokenizer, max_sequences=8), crowd).rows(0, 7)[6]
    assert shared["completion"] == alone["completion"] and shared["index"] == 6


def test_a_stop_is_seen_between_two_decoding_steps(lm):
    model, tokenizer = lm
    requests = requests_of(*[{"prompt": "Paris is", "max_tokens": 64}] * 4)
    rows = CompletionRows(Engine(model, tokenizer, max_sequences=2), requests)
    asked = []

    def alive() -> bool:
        asked.append(rows.steps)
        return len(asked) < 3

    with pytest.raises(RunStopped):
        rows.rows(0, 4, alive=alive, every=0.0)
    assert asked == [0, 1, 2]


# --- jobs on a text-generation version ------------------------------------------------------


@pytest.fixture
def writer(owner: Any, gpt2_dir: Path, tmp_path: Path, fresh_model_cache: Any) -> ModelVersion:
    """A ready text-generation version "writer" v1: the tiny GPT-2 uploaded as a zip and validated in-process."""
    model = services.model_create(actor=owner, name="writer", description="a tiny random GPT-2")
    archive = directory_zip(gpt2_dir, tmp_path / "writer.zip")
    version = services.version_upload(
        actor=owner, model=model, file=SimpleUploadedFile("writer.zip", archive.read_bytes()), filename="writer.zip",
        task=TextTask.TEXT_GENERATION, enqueue=False,
    )  # fmt: skip
    assert validation.version_validate(version.pk) == VersionStatus.READY
    version.refresh_from_db()
    return version


def submit_prompts(actor: Any, *items: Any, **fields: Any) -> BatchJob:
    return jobs.job_submit(
        actor=actor, model_name="writer", version=1, file=SimpleUploadedFile("prompts.jsonl", lines(*items).read()),
        filename="prompts.jsonl", **fields,
    )  # fmt: skip


@pytest.mark.django_db
def test_a_generation_job_writes_its_completions_in_order_and_meters_its_tokens(owner, writer, lm):
    model, tokenizer = lm
    metrics.recorder.reset()
    chat = [{"role": "user", "content": "Hi"}]
    job = submit_prompts(
        owner,
        *[{"prompt": p, "max_tokens": 3 + i} for i, p in enumerate(PROMPTS)],
        {"prompt": "word " * model.config.max_position_embeddings},
        {"messages": chat, "max_tokens": 5},
        temperature=0,
        chunk_size=3,
    )
    assert (job.status, job.total_rows, job.chunk_size, job.input_format, job.result_format) == (
        "queued", 8, 3, "jsonl", "jsonl")  # fmt: skip
    job = run(job)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert (job.rows_done, job.progress, job.parts) == (8, 100.0, [])
    got = result_lines(job)
    assert [line["index"] for line in got] == list(range(8))
    for i, prompt in enumerate(PROMPTS):
        assert got[i]["completion"] == greedy(model, tokenizer, tokenizer(prompt)["input_ids"], 3 + i)
        assert got[i]["finish_reason"] == "length" and got[i]["usage"]["completion_tokens"] == 3 + i
    assert "over the model's context" in got[6]["error"]["message"]
    ids = tokenizer(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
                    add_special_tokens=False)["input_ids"]  # fmt: skip
    assert got[7]["completion"] == greedy(model, tokenizer, ids, 5)
    assert [path.name for path in stored_job_files()] == ["input.jsonl", "result.jsonl"]
    # Every answered line's tokens are metered for the job's owner (prompt, completion).
    ((key, cell),) = metrics.recorder.usage_meter.take().items()
    prompt_tokens, completion_tokens = completions.line_tokens(got)
    assert (key[0], key[2], key[3]) == (writer.pk, owner.pk, None)
    assert cell[1:] == [prompt_tokens, completion_tokens] and completion_tokens == sum(range(3, 9)) + 5
    metrics.recorder.reset()


@pytest.mark.django_db
def test_a_generation_job_stops_between_two_decoding_steps_when_cancelled(owner, writer, monkeypatch):
    job = submit_prompts(owner, *[{"prompt": "Paris is", "max_tokens": 200}] * 6, chunk_size=6)
    steps = 0
    real_step = Engine.step

    def step(engine: Engine) -> Any:
        nonlocal steps
        steps += 1
        if steps == 5:  # someone presses Cancel while the first chunk is generating
            BatchJob.objects.filter(pk=job.pk).update(cancel_requested=True)
        return real_step(engine)

    monkeypatch.setattr(Engine, "step", step)
    monkeypatch.setattr(tasks, "PROGRESS_SECONDS", 0.0)
    job = run(job)
    assert job.status == JobStatus.CANCELLED and job.rows_done == 0
    assert steps < 10 and not job.result_path


@pytest.mark.django_db
def test_a_redelivered_generation_job_resumes_after_its_saved_rows(owner, writer, monkeypatch):
    job = submit_prompts(owner, *[{"prompt": p, "max_tokens": 4, "temperature": 0} for p in PROMPTS], chunk_size=2)
    whole = result_lines(run(job))
    job = submit_prompts(owner, *[{"prompt": p, "max_tokens": 4, "temperature": 0} for p in PROMPTS], chunk_size=2)
    # The first task hands over after its first chunk (as before the time limit); the next one resumes.
    monkeypatch.setattr(loop, "segment_seconds", lambda: 0.0)
    monkeypatch.setattr(tasks, "job_enqueue", lambda job_id: None)
    assert tasks.job_run(str(job.pk)) == JobStatus.QUEUED
    job.refresh_from_db()
    assert (job.rows_saved, len(job.parts)) == (2, 1)
    monkeypatch.setattr(loop, "segment_seconds", lambda: 600.0)
    job = run(job)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert result_lines(job) == whole


@pytest.mark.django_db
def test_generation_files_are_refused_at_submission_naming_their_lines(api, owner, writer, settings):
    client = api(owner)

    def post(content: bytes, filename: str = "prompts.jsonl", **fields: Any) -> Any:
        data = {"model": "writer", "version": "1", "file": SimpleUploadedFile(filename, content), **fields}
        return client.post(JOBS, data, format="multipart")

    good = lines({"prompt": "Hi"}).read()
    bad = lines({"prompt": "Hi"}, {"messages": [{"role": "bot", "content": "x"}]}, b"{oops", {"prompt": "Hi"}).read()
    response = post(bad)
    assert response.status_code == 400, response.content
    assert 'line 2: message 0 has an unknown role "bot"' in response.json()["error"]
    assert "line 3 is not valid JSON" in response.json()["error"]
    response = post(good, result_format="npz")
    assert response.status_code == 400 and "writes JSON lines" in response.json()["error"]
    response = post(b"PK\x03\x04zip", filename="prompts.npz")
    assert response.status_code == 400 and "takes JSON lines" in response.json()["error"]
    ModelVersion.objects.filter(pk=writer.pk).update(max_tokens_limit=8)
    response = post(lines({"prompt": "Hi", "max_tokens": 9}).read())
    assert response.status_code == 400 and "'max_tokens' must be from 1 to 8 for this model" in response.json()["error"]
    assert not BatchJob.objects.exists() and not stored_job_files()
    response = post(good, temperature="2.5")
    assert response.status_code == 400 and "temperature" in response.json()["error"]
    response = post(good, max_tokens="8", temperature="0")
    assert response.status_code == 201, response.content
    assert (response.json()["total_rows"], response.json()["chunk_size"]) == (1, settings.GENERATION_MAX_SEQUENCES)
    with artifact_storage().open(BatchJob.objects.get().input_path, "rb") as stream:
        assert prompts_load(stream)[0]["params"]["max_tokens"] == 8


@pytest.mark.django_db
def test_the_jobs_page_takes_a_generation_file_with_its_defaults_and_links_the_completions(client, owner, writer):
    client.force_login(owner)
    page = client.get("/jobs/new/?model=writer").content.decode()
    assert 'name="max_tokens"' in page and 'name="temperature"' in page and "text-generation" in page
    file = SimpleUploadedFile("prompts.jsonl", lines({"prompt": "Paris is"}, {"prompt": "Hi", "max_tokens": 2}).read())
    data = {"model": "writer", "version": "1", "file": file, "max_tokens": 3, "temperature": 0}
    response = client.post("/jobs/new/", data)
    job = BatchJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    with artifact_storage().open(job.input_path, "rb") as stream:
        stored = prompts_load(stream)
    assert [(r["params"]["max_tokens"], r["params"]["temperature"]) for r in stored] == [(3, 0.0), (2, 0.0)]
    run(job)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'href="/api/v1/jobs/{job.pk}/result/"' in page and "Download completions (.jsonl)" in page
    assert "JSON lines of prompts" in page
    assert [line["usage"]["completion_tokens"] for line in result_lines(job)] == [3, 2]
    response = client.post("/jobs/new/", {**data, "file": SimpleUploadedFile("p.jsonl", b'{"prompt": 1}\n'),
                                          "temperature": 2.5})  # fmt: skip
    assert response.status_code == 400 and "temperature" in response.content.decode()
