"""Generative (text-generation) versions: uploaded and validated, cached on a worker, their max_tokens edited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files import File

from inference import validation
from inference.cache import ModelCache
from portal.text_models import directory_zip, gpt2_save, single_threaded
from registry import services
from registry.models import AuditEvent, ModelVersion, VersionStatus
from tests.registry.test_api import MODELS, assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # As the workers run: a second OpenMP thread waiting for a busy core slows a tiny model's step ~20x.
    with single_threaded():
        yield


@pytest.fixture(scope="module")
def gpt_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpt")
    return directory_zip(gpt2_save(root / "gpt2-tiny", size="tiny"), root / "gpt2-tiny.zip")


@pytest.fixture
def generative(owner: Any, gpt_zip: Path) -> ModelVersion:
    model = services.model_create(actor=owner, name="gpt")
    with gpt_zip.open("rb") as stream:
        version = services.version_upload(actor=owner, model=model, file=File(stream, name=gpt_zip.name),
                                          filename=gpt_zip.name, enqueue=False)  # fmt: skip
    assert validation.version_validate(version.pk) == VersionStatus.READY, ModelVersion.objects.get(
        pk=version.pk
    ).status_reason
    version.refresh_from_db()
    return version


def test_a_causal_lm_validates_by_generating_and_records_context_and_chat_template(generative):
    figures = generative.validation
    assert generative.task == "text-generation"
    assert [output["name"] for output in generative.signature["outputs"]] == ["text", "tokens"]
    assert figures["context_length"] == 512 and figures["chat_template"] is True
    assert figures["task"] == "text-generation" and figures["dtype"] == "float32" and figures["vocab_size"] > 500
    assert figures["parameter_count"] > 100_000 and figures["memory_bytes"] > 0 and figures["load_seconds"] > 0
    assert figures["latency_ms"]["p50"] > 0 and figures["latency_ms"]["tokens"] == 4
    assert isinstance(figures["example_completion"], str)
    assert generative.example_input[0]["data"] == ["Once upon a time, the portal"]


def test_the_model_cache_loads_a_generative_version_and_warms_it_up_by_generating(generative):
    loaded = ModelCache(10**10).get(generative.pk)
    assert loaded.generative and loaded.text and loaded.task == "text-generation"


def test_max_tokens_are_set_per_version_checked_and_audited(api, owner, generative):
    client = api(owner)
    url = f"{MODELS}gpt/versions/1/"
    response = client.patch(url, {"max_tokens_default": 64, "max_tokens_limit": 256}, format="json")
    assert response.status_code == 200, response.content
    assert (response.json()["max_tokens_default"], response.json()["max_tokens_limit"]) == (64, 256)
    event = AuditEvent.objects.filter(action="version.update").latest("id")
    assert (event.before["max_tokens_limit"], event.after["max_tokens_limit"]) == (None, 256)
    for body, fragment, field in [
        ({"max_tokens_default": 0}, "max_tokens_default must be a positive number", "max_tokens_default"),
        ({"max_tokens_limit": 600}, "over the model's context length of 512", "max_tokens_limit"),
        ({"max_tokens_default": 513}, "max_tokens_default 513 is over the model's context", "max_tokens_default"),
        ({"max_tokens_default": 300}, "max_tokens_default 300 is over max_tokens_limit 256", "max_tokens_default"),
        ({"max_tokens_limit": 32}, "max_tokens_default 64 is over max_tokens_limit 32", "max_tokens_limit"),
    ]:
        response = client.patch(url, body, format="json")
        assert_error(response, 400, fragment)
        assert field in response.json()["fields"]
    generative.refresh_from_db()
    assert (generative.max_tokens_default, generative.max_tokens_limit) == (64, 256)


def test_max_tokens_apply_only_to_text_generation(api, owner, registered_model, ready_version):
    ready_version()
    assert_error(
        api(owner).patch(f"{MODELS}iris/versions/1/", {"max_tokens_limit": 10}, format="json"),
        400,
        "applies only to text-generation versions",
    )


def test_a_generative_archive_uploads_through_the_browser_form(client, owner, registered_model, gpt_zip):
    client.force_login(owner)
    page = client.get("/models/iris/upload/").content.decode()
    assert 'value="text-generation"' in page
    with gpt_zip.open("rb") as stream:
        response = client.post("/models/iris/upload/", {"file": stream, "task": "text-generation"})
    assert response.status_code == 302, response.content.decode()[-2000:]
    version = ModelVersion.objects.get(model=registered_model)
    assert version.task == "text-generation" and version.format == "huggingface"


def test_the_version_page_edits_max_tokens_through_the_service(client, owner, generative):
    client.force_login(owner)
    page = client.get("/models/gpt/versions/1/").content.decode()
    assert 'name="max_tokens_limit"' in page and "The model's context is 512 tokens." in page
    response = client.post("/models/gpt/versions/1/settings/", {"max_tokens_default": "32", "max_tokens_limit": "300"},
                           follow=True)  # fmt: skip
    assert "Settings of version 1 saved." in response.content.decode()
    generative.refresh_from_db()
    assert (generative.max_tokens_default, generative.max_tokens_limit, generative.max_batch_size) == (32, 300, 32)
    response = client.post("/models/gpt/versions/1/settings/", {"max_tokens_limit": "600"}, follow=True)
    assert "max_tokens_limit 600 is over the model&#x27;s context length of 512 tokens." in response.content.decode()
    generative.refresh_from_db()
    assert generative.max_tokens_limit == 300
    assert AuditEvent.objects.filter(action="version.update").count() == 1


def test_a_tensor_version_page_has_no_max_tokens_and_outsiders_cannot_change_settings(
    client, owner, outsider, registered_model, ready_version
):
    ready_version()
    client.force_login(owner)
    page = client.get("/models/iris/versions/1/").content.decode()
    assert 'name="max_batch_size"' in page and 'name="max_tokens_limit"' not in page
    client.force_login(outsider)
    assert client.post("/models/iris/versions/1/settings/", {"max_batch_size": "4"}).status_code == 404
    assert ModelVersion.objects.get().max_batch_size == 32
