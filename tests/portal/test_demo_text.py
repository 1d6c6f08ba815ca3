"""The text demo's builders: the models are trained well enough to answer their demo questions.

Each model is built once per session (tests/portal/conftest.py) and read through the serving runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.runtimes import HuggingFaceRuntime
from portal import demo_text, text_models
from registry.text_tasks import TextTask


@pytest.fixture(scope="module")
def fill_mask(demo_dirs: dict[str, Path]) -> HuggingFaceRuntime:
    return HuggingFaceRuntime.load(demo_dirs[TextTask.FILL_MASK], torch.device("cpu"), task=TextTask.FILL_MASK)


@pytest.fixture(scope="module")
def sentiment(demo_dirs: dict[str, Path]) -> HuggingFaceRuntime:
    directory = demo_dirs[TextTask.TEXT_CLASSIFICATION]
    return HuggingFaceRuntime.load(directory, torch.device("cpu"), task=TextTask.TEXT_CLASSIFICATION)


def _top_words(runtime: HuggingFaceRuntime, text: str) -> list[str]:
    outputs = runtime.predict_texts([text], {"top_k": 3}, max_rows=8)
    return [word.decode() for word in outputs["token_str"][0]]


def test_fill_mask_demo_answers_capital_for_paris(fill_mask):
    outputs = fill_mask.predict_texts([demo_text.FILL_MASK_EXAMPLE], {"top_k": 5}, max_rows=8)
    assert outputs["token_str"][0][0].decode() == "capital"
    assert outputs["score"][0][0] > 0.5


def test_fill_mask_demo_answers_capital_for_other_countries(fill_mask):
    assert _top_words(fill_mask, "Tokyo is the [MASK] of Japan.")[0] == "capital"
    assert _top_words(fill_mask, "Ottawa is the [MASK] of Canada.")[0] == "capital"


def test_fill_mask_demo_directory_is_safetensors_with_a_mask_token(tmp_path):
    directory = demo_text.fill_mask_build(tmp_path / "model", steps=1)
    names = {path.name for path in directory.iterdir()}
    assert "model.safetensors" in names
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in names)
    assert json.loads((directory / "tokenizer_config.json").read_text())["mask_token"] == "[MASK]"
    assert json.loads((directory / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]


def test_fill_mask_demo_vocabulary_holds_capital_as_one_token(tmp_path):
    tokenizer = text_models.tokenizer_from_words(demo_text.capitals_corpus())
    assert tokenizer.tokenize(demo_text.FILL_MASK_EXAMPLE) == ["paris", "is", "the", "[MASK]", "of", "france", "."]
    assert tokenizer.tokenize("Zanzibar") == ["z", "##a", "##n", "##z", "##i", "##b", "##a", "##r"]


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("This movie was wonderful and I loved it.", "positive"),
        ("What a great book!", "positive"),
        ("I enjoyed this concert.", "positive"),
        ("The service was terrible.", "negative"),
        ("The film was boring and dull.", "negative"),
        ("I hated this meal.", "negative"),
    ],
)
def test_sentiment_demo_gets_obvious_sentences_right(sentiment, text, label):
    outputs = sentiment.predict_texts([text], {}, max_rows=8)
    assert outputs["label"][0].decode() == label
    assert outputs["scores"][0].max() > 0.9


def test_sentiment_demo_scores_are_probabilities_over_its_two_labels(sentiment):
    assert sentiment.labels == demo_text.SENTIMENT_LABELS
    scores = sentiment.predict_texts(["A lovely hotel.", "An awful hotel."], {}, max_rows=8)["scores"]
    assert scores.shape == (2, 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_builds_are_deterministic(tmp_path):
    first = demo_text.sentiment_build(tmp_path / "a", steps=5)
    second = demo_text.sentiment_build(tmp_path / "b", steps=5)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_minilm_directory_is_a_save_pretrained_directory():
    directory: Path = demo_text.minilm_directory()
    assert (directory / "config.json").is_file()
    assert (directory / "model.safetensors").is_file()
