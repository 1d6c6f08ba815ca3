"""Text models in the serving loop and the model cache: batching across requests, per-request parameters, 400s."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core import redis as shared_redis
from inference import serving
from inference.cache import LoadedModel
from inference.runtimes.huggingface import HuggingFaceRuntime
from inference.wire import BatchReply, BatchRequest, Failure, Outputs, bytes_array
from registry.text_tasks import TextTask, task_signature


@pytest.fixture(scope="module")
def models(hf_dirs: dict[str, Path]) -> dict[str, LoadedModel]:
    loaded = {}
    for version_id, (task, path) in enumerate(hf_dirs.items(), start=1):
        runtime = HuggingFaceRuntime.load(path, torch.device("cpu"), task=task)
        loaded[task] = LoadedModel(
            version_id=version_id,
            model_name=f"bert-{task}",
            version=1,
            signature=task_signature(task, runtime.config.to_dict()),
            runtime=runtime,
            size_bytes=runtime.memory_bytes(),
            batching=True,
            max_batch_size=4,
        )
    return loaded


@pytest.fixture
def loop(settings):
    settings.INFERENCE_REDIS_URL = "redis://127.0.0.1:1/0"  # never reached by these tests
    yield serving.ServingLoop(["inference"])
    shared_redis.reset()


class OneModel:
    """A model cache that holds one loaded model."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    def get(self, version_id: int) -> LoadedModel:
        return self.model


def texts(*items: str | bytes) -> dict[str, np.ndarray]:
    return {"text": bytes_array([item.encode() if isinstance(item, str) else item for item in items], [len(items)])}


def answer(loop: serving.ServingLoop, monkeypatch: pytest.MonkeyPatch, model: LoadedModel,
           requests: list[tuple[dict[str, np.ndarray], dict[str, Any]]]) -> list[Any]:  # fmt: skip
    """The answers to `requests` sent as one batch through the wire (encoded and decoded)."""
    monkeypatch.setattr(serving, "model_cache", lambda: OneModel(model))
    message = BatchRequest("b", "maas:reply:test", model.version_id, time.time(), time.time() + 30,
                           [tensors for tensors, _ in requests], [params for _, params in requests])  # fmt: skip
    ((_, reply),) = loop.handle([BatchRequest.decode(message.encode())])
    return BatchReply.decode(reply.encode()).answers


def alone(model: LoadedModel, tensors: dict[str, np.ndarray], parameters: dict[str, Any]) -> dict[str, np.ndarray]:
    return {name: array for name, _, array in model.predict(tensors, parameters)}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, array in want.items():
        if array.dtype == object or array.dtype.kind == "i":
            assert got[name].tolist() == array.tolist(), name
        else:
            np.testing.assert_allclose(got[name], array, rtol=1e-4, atol=1e-5, err_msg=name)


def test_requests_with_different_parameters_share_a_batch_and_each_gets_its_own(loop, monkeypatch, models):
    model = models[TextTask.FILL_MASK]
    calls: list[int] = []
    predict_texts = model.runtime.predict_texts
    monkeypatch.setattr(model.runtime, "predict_texts",
                        lambda texts, *a, **kw: calls.append(len(texts)) or predict_texts(texts, *a, **kw))  # fmt: skip
    requests = [
        (texts("Paris is the [MASK] of France.", "The [MASK] serves models."), {"top_k": 3}),
        (texts("Rome is the [MASK] of Italy."), {}),
        (texts("[MASK] lives in London."), {"top_k": 3}),
        (texts("I [MASK] this product."), {"top_k": 8}),
    ]
    answers = answer(loop, monkeypatch, model, requests)
    # One runtime call per set of parameters: {top_k: 3} carries three texts of two requests.
    assert sorted(calls) == [1, 1, 3]
    assert [a.tensors["token_str"].shape for a in answers] == [(2, 3), (1, 5), (1, 3), (1, 8)]
    for (tensors, parameters), got in zip(requests, answers, strict=True):
        assert_same(got.tensors, alone(model, tensors, parameters))


def test_token_classification_rows_are_trimmed_to_each_requests_longest(loop, monkeypatch, models):
    model = models[TextTask.TOKEN_CLASSIFICATION]
    requests = [
        (texts("Alice lives in London and works at Acme, the portal serves language models."), {}),
        (texts("Rome.", "Paris is nice."), {}),
    ]
    answers = answer(loop, monkeypatch, model, requests)
    widths = [a.tensors["entity"].shape[1] for a in answers]
    assert widths[0] > widths[1] == (answers[1].tensors["start"] >= 0).sum(axis=1).max()
    for (tensors, parameters), got in zip(requests, answers, strict=True):
        assert_same(got.tensors, alone(model, tensors, parameters))


@pytest.mark.parametrize("task", [TextTask.TEXT_CLASSIFICATION, TextTask.FEATURE_EXTRACTION])
def test_many_texts_of_many_requests_are_split_back_in_order(loop, monkeypatch, models, task):
    model = models[task]  # max_batch_size 4: the ten texts take several forwards
    sentences = [f"Sentence number {i} is {'very ' * i}long." for i in range(10)]
    requests = [(texts(*sentences[:3]), {}), (texts(*sentences[3:4]), {}), (texts(*sentences[4:]), {})]
    answers = answer(loop, monkeypatch, model, requests)
    assert [a.tensors["tokens"].shape[0] for a in answers] == [3, 1, 6]
    for (tensors, parameters), got in zip(requests, answers, strict=True):
        assert_same(got.tensors, alone(model, tensors, parameters))


@pytest.mark.parametrize(
    ("bad", "parameters", "message"),
    [
        (texts("Paris is the [MASK].", ""), {}, "text 1 is empty"),
        (texts("Paris is the capital."), {}, "text 0 has 0 mask tokens; put exactly one [MASK] in each text"),
        (texts("[MASK] and [MASK]."), {}, "text 0 has 2 mask tokens"),
        (texts(b"caf\xe9 [MASK]"), {}, "text 0 is not valid UTF-8"),
        (texts("The [MASK] works."), {"top_k": 1000}, "parameter 'top_k' is 1000; it must be between 1 and"),
        (texts("The [MASK] works."), {"truncate": "yes"}, "parameter 'truncate' must be true or false"),
        (texts("The [MASK] " + "works " * 100), {"truncate": False}, "tokens long; the model reads at most 64"),
    ],
)
def test_a_bad_request_fails_400_alone_and_its_batch_mates_are_answered(
    loop, monkeypatch, models, bad, parameters, message
):
    model = models[TextTask.FILL_MASK]
    good = [(texts("Rome is the [MASK] of Italy."), {}), (texts("The [MASK] serves models.", "I [MASK] it."), {})]
    answers = answer(loop, monkeypatch, model, [good[0], (bad, parameters), good[1]])
    assert isinstance(answers[1], Failure) and answers[1].status == 400
    assert message in answers[1].message
    for (tensors, params), got in zip(good, [answers[0], answers[2]], strict=True):
        assert isinstance(got, Outputs)
        assert_same(got.tensors, alone(model, tensors, params))


def test_a_model_that_raises_keeps_the_422_of_the_tensor_path(loop, monkeypatch, models):
    model = models[TextTask.TEXT_CLASSIFICATION]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(model.runtime, "predict_texts", broken)
    answers = answer(loop, monkeypatch, model, [(texts("one"), {}), (texts("two"), {})])
    assert [a.status for a in answers] == [422, 422]
    assert "raised RuntimeError during the forward pass: CUDA error" in answers[0].message


def test_a_loaded_text_model_reads_numpy_strings_and_answers_in_signature_order(models):
    model = models[TextTask.TEXT_CLASSIFICATION]
    assert model.text and model.task == "text-classification"
    outputs = model.predict({"text": np.array(["I love this product.", "I hate it."])})
    assert [(name, datatype) for name, datatype, _ in outputs] == [
        ("scores", "FP32"),
        ("label", "BYTES"),
        ("tokens", "INT64"),
    ]
    assert outputs[0][2].shape == (2, 2) and outputs[1][2].tolist()[0] in (b"negative", b"positive")
