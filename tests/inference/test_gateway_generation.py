"""How the gateway routes a text-generation version, and the doors that do not generate refusing it."""

from __future__ import annotations

from typing import Any

import pytest

from inference.gateway import target_resolve
from registry import services
from registry.models import ModelVersion

pytestmark = pytest.mark.django_db


def generative(owner: Any, name: str = "gpt", **fields: Any) -> ModelVersion:
    model = services.model_create(actor=owner, name=name)
    values: dict[str, Any] = {
        "model": model, "version": 1, "format": "huggingface", "task": "text-generation", "artifact": "gpt.zip",
        "sha256": "0" * 64, "size_bytes": 1, "status": "ready",
        "validation": {"context_length": 512, "chat_template": True},
    }  # fmt: skip
    return ModelVersion.objects.create(**(values | fields))


def test_a_generative_target_carries_its_token_limits_context_and_chat_template(owner, settings):
    settings.GENERATION_MAX_TOKENS_DEFAULT, settings.GENERATION_MAX_TOKENS_LIMIT = 256, 2048
    generative(owner)
    target = target_resolve(owner, "gpt", "1")
    assert (target.context_length, target.chat_template) == (512, True)
    # The settings' limit is cut to what the context leaves a one-token prompt.
    assert (target.max_tokens_default, target.max_tokens_limit) == (256, 511)


def test_a_version_s_own_limits_win_within_its_context(owner):
    generative(owner, max_tokens_default=900, max_tokens_limit=1000,
               validation={"context_length": 128, "chat_template": False})  # fmt: skip
    target = target_resolve(owner, "gpt", "1")
    assert (target.max_tokens_default, target.max_tokens_limit, target.chat_template) == (127, 127, False)
    ModelVersion.objects.filter(model__name="gpt").update(max_tokens_default=10, max_tokens_limit=20)
    target = target_resolve(owner, "gpt", "1")
    assert (target.max_tokens_default, target.max_tokens_limit) == (10, 20)


def test_other_tasks_have_no_generation_fields(owner):
    generative(owner, task="fill-mask", validation={"context_length": 64})
    target = target_resolve(owner, "gpt", "1")
    assert (target.max_tokens_default, target.max_tokens_limit, target.context_length, target.chat_template) == (
        0, 0, 0, False,
    )  # fmt: skip


def test_the_friendly_endpoint_refuses_a_generative_model_and_points_to_v1(owner, api):
    generative(owner)
    response = api(owner).post("/api/v1/models/gpt/predict/?version=1", {"inputs": "Once"}, format="json")
    assert response.status_code == 400
    assert "use POST /v1/completions or /v1/chat/completions" in response.json()["error"]
