"""Request-side checks of text models and their friendly answers (inference.text)."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InvalidInput
from inference import text
from inference.wire import bytes_array


def test_texts_are_decoded_and_checked():
    assert text.texts_check([b"caf\xc3\xa9", "plain"], "input 'text'") == ["café", "plain"]
    assert text.texts_of_tensor(bytes_array([b"a", b"b"], [2]), "input 'text'") == ["a", "b"]


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        ([], "holds no text"),
        ([b"fine", b""], "text 1 is empty"),
        ([b"ok", b"\xff\xfebad"], "text 1 is not valid UTF-8 (byte 0xff at position 0)"),
        (["\ud800"], "lone surrogate"),
    ],
)
def test_bad_texts_are_refused_naming_the_problem(items, fragment):
    with pytest.raises(InvalidInput, match=None) as caught:
        text.texts_check(items, "input 'text'")
    assert fragment in caught.value.message and caught.value.message.startswith("input 'text'")


def test_a_list_over_the_item_limit_is_refused(settings):
    settings.INFERENCE_TEXT_MAX_ITEMS = 3
    text.texts_check(["a"] * 3, "inputs")
    with pytest.raises(InvalidInput, match="holds 4 texts, over the limit of 3 per request"):
        text.texts_check(["a"] * 4, "inputs")


def test_parameters_are_checked_against_the_task():
    assert text.parameters_check("fill-mask", {"top_k": 3, "truncate": False}) == {"top_k": 3, "truncate": False}
    assert text.parameters_check("feature-extraction", {"normalize": True}) == {"normalize": True}
    assert text.parameters_check("fill-mask", None) == {}
    # The protocol's own parameters pass by and are not sent as text parameters.
    checked = text.parameters_check("fill-mask", {"binary_data_output": True, "top_k": 2}, protocol=True)
    assert checked == {"top_k": 2}


@pytest.mark.parametrize(
    ("task", "parameters", "fragment"),
    [
        ("fill-mask", {"top_k": 0}, "'top_k' must be an integer from 1 to 100, got 0"),
        ("fill-mask", {"top_k": 101}, "'top_k' must be an integer from 1 to 100, got 101"),
        ("fill-mask", {"top_k": "3"}, "'top_k' must be an integer"),
        ("fill-mask", {"top_k": True}, "'top_k' must be an integer"),
        ("fill-mask", {"truncate": "no"}, "'truncate' must be true or false"),
        ("token-classification", {"top_k": 2}, "'top_k' is not taken by token-classification models; they take: "
                                               "truncate"),
        ("fill-mask", {"binary_data_output": True}, "'binary_data_output' is not taken"),
        ("fill-mask", [1], "'parameters' must be an object"),
    ],
)  # fmt: skip
def test_bad_parameters_are_refused_naming_them(task, parameters, fragment):
    with pytest.raises(InvalidInput) as caught:
        text.parameters_check(task, parameters)
    assert fragment in caught.value.message


def test_friendly_texts_take_a_text_or_a_list():
    assert text.friendly_texts("one") == (["one"], True)
    assert text.friendly_texts(["a", "b"]) == (["a", "b"], False)
    for wrong in (3, ["a", 1], {"text": "a"}, None):
        with pytest.raises(InvalidInput, match="inputs must be a text or a list of texts"):
            text.friendly_texts(wrong)


def test_texts_tensor_is_bytes_of_shape_n():
    tensor = text.texts_tensor(["a", "é"])
    assert tensor.shape == (2,) and tensor.tolist() == [b"a", "é".encode()]


def _fill_mask_outputs() -> dict[str, np.ndarray]:
    return {
        "token_str": bytes_array([b"capital", b"heart", b"red", b"blue"], [2, 2]),
        "score": np.array([[0.9, 0.05], [0.6, 0.3]], dtype=np.float32),
        "token": np.array([[11, 12], [13, 14]], dtype=np.int64),
        "tokens": np.array([9, 7], dtype=np.int64),
    }


def test_fill_mask_answers_rank_tokens_and_fill_the_sequence():
    answers = text.friendly_answer(
        "fill-mask", ["Paris is the [MASK] of France.", "The sky is <mask>."], _fill_mask_outputs(), {}
    )
    assert answers[0][0] == pytest.approx(
        {"token_str": "capital", "score": 0.9, "token": 11, "sequence": "Paris is the capital of France."}
    )
    assert [a["sequence"] for a in answers[1]] == ["The sky is red.", "The sky is blue."]
    assert text.usage_tokens(_fill_mask_outputs()) == 16


def test_classification_answers_the_top_k_labels():
    outputs = {"scores": np.array([[0.1, 0.7, 0.2]], dtype=np.float32), "label": bytes_array([b"b"], [1])}
    (best,) = text.friendly_answer("text-classification", ["t"], outputs, {}, ["a", "b", "c"])
    assert best == [{"label": "b", "score": pytest.approx(0.7)}]
    (ranked,) = text.friendly_answer("text-classification", ["t"], outputs, {"top_k": 5}, [])
    assert [item["label"] for item in ranked] == ["LABEL_1", "LABEL_2", "LABEL_0"]


def test_token_classification_drops_padding():
    outputs = {
        "entity": bytes_array([b"B-PER", b"B-LOC", b"B-PER", b""], [2, 2]),
        "score": np.array([[0.9, 0.8], [0.7, 0.0]], dtype=np.float32),
        "word": bytes_array([b"ada", b"london", b"alan", b""], [2, 2]),
        "start": np.array([[0, 22], [0, -1]], dtype=np.int64),
        "end": np.array([[3, 28], [4, -1]], dtype=np.int64),
    }
    first, second = text.friendly_answer("token-classification", ["x", "y"], outputs, {})
    assert [e["word"] for e in first] == ["ada", "london"] and first[1]["start"] == 22
    assert second == [{"entity": "B-PER", "score": pytest.approx(0.7), "word": "alan", "start": 0, "end": 4}]


def test_feature_extraction_answers_vectors():
    outputs = {"embedding": np.array([[0.5, -0.25]], dtype=np.float32)}
    assert text.friendly_answer("feature-extraction", ["x"], outputs, {}) == [[0.5, -0.25]]
