"""Batch generation jobs end to end: a prompts file over HTTP with a bearer token, the broker,
and a real worker process running them through its continuous-batching engine."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from transformers import AutoModelForCausalLM, AutoTokenizer

from accounts import services as token_services
from inference import validation
from inference.models import BatchJob
from portal.text_models import directory_zip, gpt2_save
from registry import services
from registry.models import VersionStatus
from registry.text_tasks import TextTask
from tests.integration.test_batch_jobs import wait_settled

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

logger = logging.getLogger(__name__)

PROMPTS = ["Paris is", "The portal serves", "Hi", "def add(a, b):", "Rome is the capital", "Once upon a time"]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gpt2_save(Path(tmp_path_factory.mktemp("gpt2")) / "tiny", size="tiny")


@pytest.fixture
def writer(owner: Any, gpt2_dir: Path, tmp_path: Path) -> Any:
    """The tiny GPT-2 as "writer" v1 (uploaded, validated in-process), its production alias set."""
    model = services.model_create(actor=owner, name="writer", description="a tiny random GPT-2")
    archive = directory_zip(gpt2_dir, tmp_path / "writer.zip")
    version = services.version_upload(
        actor=owner, model=model, file=SimpleUploadedFile("writer.zip", archive.read_bytes()), filename="writer.zip",
        task=TextTask.TEXT_GENERATION, enqueue=False,
    )  # fmt: skip
    assert validation.version_validate(version.pk) == VersionStatus.READY
    services.alias_set(actor=owner, model=model, name="production", version_number=1)
    return version


@pytest.fixture
def http(live_server: Any, owner: Any, worker: Any) -> requests.Session:
    _, secret = token_services.token_create(user=owner, name="generation jobs")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {secret}"
    session.base_url = live_server.url  # type: ignore[attr-defined]
    return session


def greedy(model: Any, tokenizer: Any, ids: list[int], max_tokens: int) -> str:
    """In-process generate(do_sample=False) of `ids`, decoded up to its end-of-sequence."""
    tensor = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(tensor, attention_mask=torch.ones_like(tensor), do_sample=False, max_new_tokens=max_tokens)
    new = out[0, len(ids) :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new)


def test_a_generation_job_runs_on_the_worker_and_its_greedy_lines_equal_generate(http, writer, gpt2_dir, worker):
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    requests_ = [
        *[{"prompt": prompt, "temperature": 0, "max_tokens": 8 + 4 * i} for i, prompt in enumerate(PROMPTS)],
        {"prompt": "word " * model.config.max_position_embeddings},  # over the context: an error line
        {"messages": chat, "temperature": 0, "max_tokens": 12},
        {"prompt": "Once upon", "temperature": 0.8, "top_p": 0.9, "seed": 5, "max_tokens": 16},
        *[{"prompt": prompt, "temperature": 0, "max_tokens": 32} for prompt in PROMPTS * 4],
    ]
    content = "".join(json.dumps(line) + "\n" for line in requests_).encode()
    response = http.post(
        f"{http.base_url}/api/v1/jobs/",
        files={"file": ("prompts.jsonl", content)},
        data={"model": "writer", "chunk_size": "4"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    body = wait_settled(http, response.json()["id"], timeout=120)
    assert body["status"] == "succeeded", (body["error"], worker.output()[-3000:])
    assert (body["rows_done"], body["total_rows"], body["result_format"]) == (33, 33, "jsonl")
    download = http.get(f"{http.base_url}{body['result_url']}", timeout=30)
    assert download.status_code == 200
    got = [json.loads(line) for line in download.text.splitlines()]
    assert [line["index"] for line in got] == list(range(33))

    references: dict[tuple[tuple[int, ...], int], str] = {}
    for index, request in enumerate(requests_):
        if request.get("temperature") != 0:
            continue
        if "prompt" in request:
            ids = tokenizer(request["prompt"])["input_ids"]
        else:
            text = tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        key = (tuple(ids), request["max_tokens"])
        if key not in references:
            references[key] = greedy(model, tokenizer, ids, request["max_tokens"])
        assert got[index]["completion"] == references[key], (index, request)
        assert got[index]["usage"]["prompt_tokens"] == len(ids)
    assert set(got[6]) == {"index", "error"} and "over the model's context" in got[6]["error"]["message"]
    assert got[8]["usage"]["completion_tokens"] >= 1 and got[8]["finish_reason"] in ("stop", "length")

    # The worker logs what the job generated and how fast (the model load excluded).
    job = BatchJob.objects.get(pk=body["id"])
    completion = sum(line.get("usage", {}).get("completion_tokens", 0) for line in got)
    (figure,) = [line for line in worker.output().splitlines() if f"job {job.short_id}" in line and "tokens/s" in line]
    assert f": {completion} completion tokens in " in figure
    logger.warning("generation job on the worker: %s", figure.split(": ", 2)[-1])
    assert "inference.tasks.batch_job_run" in worker.output()
