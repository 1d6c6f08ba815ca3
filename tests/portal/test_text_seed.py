"""Seeding the text demo: four Hugging Face models uploaded through the registry, validated and in
production, a held-out dataset of reviews evaluated; seeding again changes nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from inference.cache import model_cache
from monitoring.models import EvaluationRun
from portal import demo_text
from registry.models import RegisteredModel, VersionStatus, Visibility
from registry.text_tasks import TextTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def prebuilt(monkeypatch, demo_dirs):
    """The demo's models as the seed builds them, trained once per session rather than per test."""
    built = {TextTask.FILL_MASK: demo_dirs[TextTask.FILL_MASK],
             TextTask.TEXT_CLASSIFICATION: demo_dirs[TextTask.TEXT_CLASSIFICATION]}  # fmt: skip
    demos = [
        dataclasses.replace(demo, directory=lambda _, d=built[demo.task]: d) if demo.task in built else demo
        for demo in demo_text.TEXT_DEMOS
    ]
    monkeypatch.setattr(demo_text, "TEXT_DEMOS", demos)
    model_cache().reset()
    yield
    model_cache().reset()


def test_the_text_demo_is_seeded_ready_in_production_and_only_once(owner, prebuilt):
    assert demo_text.text_demo_seed(owner) == ["bert-fill-mask", "bert-sentiment", "minilm-embeddings", "gpt2-chat"]
    tasks = {}
    for model in RegisteredModel.objects.all():
        production = model.aliases.get(name="production").version
        assert production.status == VersionStatus.READY and production.format == "huggingface"
        assert model.visibility == Visibility.INTERNAL and model.description
        tasks[model.name] = production.task
    assert tasks == {"bert-fill-mask": "fill-mask", "bert-sentiment": "text-classification",
                     "minilm-embeddings": "feature-extraction", "gpt2-chat": "text-generation"}  # fmt: skip
    assert demo_text.text_demo_seed(owner) == []
    assert RegisteredModel.objects.count() == 4


def test_the_seeded_generative_model_has_a_chat_template_and_its_max_tokens(owner, prebuilt):
    demo_text.text_demo_seed(owner)
    version = RegisteredModel.objects.get(name=demo_text.GENERATIVE_MODEL).aliases.get(name="production").version
    assert version.validation["chat_template"] is True and version.validation["context_length"] == 512
    assert (version.max_tokens_default, version.max_tokens_limit) == (64, 256)
    assert model_cache().get(version.pk).generative


def test_the_seeded_fill_mask_model_answers_capital_through_the_serving_cache(owner, prebuilt):
    demo_text.text_demo_seed(owner)
    version = RegisteredModel.objects.get(name="bert-fill-mask").aliases.get(name="production").version
    assert version.example_input[0]["data"] == [demo_text.FILL_MASK_EXAMPLE]
    outputs = model_cache().get(version.pk).predict({"text": np.array([demo_text.FILL_MASK_EXAMPLE])}, {"top_k": 3})
    assert outputs[0][0] == "token_str" and outputs[0][2][0][0] in (b"capital", "capital")


@pytest.mark.celery_eager
def test_the_seeded_classifier_is_evaluated_on_held_out_reviews(owner, prebuilt, django_capture_on_commit_callbacks):
    demo_text.text_demo_seed(owner)
    with django_capture_on_commit_callbacks(execute=True):
        run = demo_text.text_evaluation_seed(owner)
    assert run is not None
    run = EvaluationRun.objects.get(pk=run.pk)
    assert run.status == "succeeded", run.error
    assert run.metrics["rows"] == len(demo_text.sentiment_holdout()) and run.metrics["accuracy"] >= 0.9
    assert demo_text.text_evaluation_seed(owner) is None
