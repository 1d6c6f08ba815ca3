"""A text-generation version page's snippets run as pasted (token in MAAS_TOKEN): curl streams
server-sent chunks ending in [DONE], and the openai client prints the streamed text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.files import File

from inference import validation
from portal import text_models
from registry import services
from registry.models import ModelVersion, VersionStatus
from registry.views import _snippets

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def gpt2_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generation-snippets")
    return text_models.directory_zip(text_models.gpt2_save(root / "tiny-gpt2", size="tiny"), root / "tiny-gpt2.zip")


@pytest.fixture
def generative(owner: Any, gpt2_archive: Path) -> ModelVersion:
    model = services.model_create(actor=owner, name="storyteller")
    with gpt2_archive.open("rb") as stream:
        version = services.version_upload(
            actor=owner, model=model, file=File(stream, name=gpt2_archive.name), filename=gpt2_archive.name,
            task="text-generation", enqueue=False,
        )  # fmt: skip
    assert validation.version_validate(version.pk) == VersionStatus.READY
    version.refresh_from_db()
    return version


def engine_warm(gateway_url: str, token: str, version: ModelVersion) -> None:
    """Ask until the worker answers: it loads the model on its first request, which on a busy
    machine takes longer than the tests' INFERENCE_TIMEOUT_SECONDS."""
    body = {"model": f"{version.model.name}:{version.version}", "prompt": "Hi", "max_tokens": 1}
    deadline = time.monotonic() + 90
    while True:
        reply = requests.post(f"{gateway_url}/v1/completions", json=body, headers={"Authorization": f"Bearer {token}"},
                              timeout=60)  # fmt: skip
        if reply.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert reply.status_code == 200, reply.text


def test_the_curl_and_openai_snippets_stream_a_chat_completion_as_pasted(gateway_url, token, generative, tmp_path):
    engine_warm(gateway_url, token, generative)
    snippets = _snippets(generative, gateway_url)
    env = {**os.environ, "MAAS_TOKEN": token}
    curl = subprocess.run(["/bin/bash", "-c", snippets["curl"]], env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert curl.returncode == 0, curl.stderr
    events = [line.removeprefix("data: ") for line in curl.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", curl.stdout
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) >= 2 and all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    streamed = "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])
    assert streamed

    script = tmp_path / "snippet.py"
    script.write_text(snippets["openai"])
    python = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120,
                            check=False)  # fmt: skip
    assert python.returncode == 0, python.stderr
    assert python.stdout.strip()
