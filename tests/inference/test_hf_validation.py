"""Validation and serving of uploaded Hugging Face versions, end to end in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from django.core.files import File

from inference import validation
from inference.cache import ModelCache
from inference.runtimes.huggingface import HuggingFaceRuntime
from portal.text_models import directory_tar_gz, directory_zip
from registry import services
from registry.models import ModelVersion, VersionStatus
from registry.text_tasks import TextTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def hf_model(owner: Any) -> Any:
    return services.model_create(actor=owner, name="bert", description="a text model")


def upload(owner: Any, model: Any, archive: Path, **fields: Any) -> ModelVersion:
    with archive.open("rb") as stream:
        return services.version_upload(actor=owner, model=model, file=File(stream, name=archive.name),
                                       filename=archive.name, enqueue=False, **fields)  # fmt: skip


@pytest.mark.parametrize(
    ("task", "pack"), [(TextTask.FILL_MASK, directory_zip), (TextTask.TEXT_CLASSIFICATION, directory_tar_gz),
                       (TextTask.TOKEN_CLASSIFICATION, directory_zip), (TextTask.FEATURE_EXTRACTION, directory_zip)]
)  # fmt: skip
def test_a_huggingface_version_validates_and_records_its_figures(owner, hf_model, hf_dirs, tmp_path, task, pack):
    suffix = ".tar.gz" if pack is directory_tar_gz else ".zip"
    version = upload(owner, hf_model, pack(hf_dirs[task], tmp_path / f"model{suffix}"), task=task)
    assert validation.version_validate(version.pk) == VersionStatus.READY, ModelVersion.objects.get(
        pk=version.pk
    ).status_reason
    version.refresh_from_db()
    figures = version.validation
    assert figures["task"] == task and figures["batching"] is True and figures["device"] == "cpu"
    assert figures["dtype"] == "float32" and figures["max_sequence_length"] == 64
    assert figures["vocab_size"] > 100 and figures["parameter_count"] > 10_000
    assert figures["memory_bytes"] > 0 and figures["load_seconds"] > 0 and figures["latency_ms"]["p50"] > 0
    assert figures["transformers_version"] == transformers.__version__ and figures["torch_version"] == torch.__version__
    assert version.signature["outputs"][-1]["name"] == "tokens"


def test_the_model_cache_serves_a_validated_text_version_from_its_unpacked_archive(
    owner, hf_model, hf_dirs, tmp_path, settings
):
    version = upload(owner, hf_model, directory_zip(hf_dirs[TextTask.FILL_MASK], tmp_path / "bert.zip"),
                     task="fill-mask")  # fmt: skip
    assert validation.version_validate(version.pk) == VersionStatus.READY
    version.refresh_from_db()
    loaded = ModelCache(budget_bytes=1 << 30).get(version.pk)
    assert loaded.text and loaded.task == "fill-mask" and loaded.batching
    assert loaded.size_bytes == version.validation["memory_bytes"]
    assert sorted(p.name for p in (settings.DATA_DIR / "hf-unpacked").iterdir()) == [version.sha256]
    outputs = {name: array for name, _, array in loaded.predict({"text": np.array(["Paris is the [MASK]."])},
                                                                {"top_k": 2})}  # fmt: skip
    assert outputs["token_str"].shape == (1, 2) and outputs["tokens"].tolist() == [7]


def test_the_uploaders_example_text_is_what_validation_runs(owner, hf_model, hf_dirs, tmp_path, monkeypatch):
    seen: list[list[str]] = []
    predict_texts = HuggingFaceRuntime.predict_texts

    def spy(self: HuggingFaceRuntime, texts: list[str], *args: Any, **kwargs: Any) -> Any:
        seen.append(texts)
        return predict_texts(self, texts, *args, **kwargs)

    monkeypatch.setattr(HuggingFaceRuntime, "predict_texts", spy)
    example = {"inputs": [{"name": "text", "datatype": "BYTES", "data": ["Alice likes Rome."]}]}
    version = upload(owner, hf_model, directory_zip(hf_dirs[TextTask.TEXT_CLASSIFICATION], tmp_path / "c.zip"),
                     task="text-classification", example_input=example)  # fmt: skip
    assert validation.version_validate(version.pk) == VersionStatus.READY
    assert seen[0] == ["Alice likes Rome."] and len(seen[1]) == 2 and seen[1][0] == "Alice likes Rome."


def test_a_model_that_cannot_load_for_its_task_fails_validation_with_the_reason(owner, hf_model, hf_dirs, tmp_path):
    # A bare encoder whose config claims a classifier: its classification head would be random weights.
    directory = shutil.copytree(hf_dirs[TextTask.FEATURE_EXTRACTION], tmp_path / "encoder")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    version = upload(owner, hf_model, directory_zip(directory, tmp_path / "e.zip"), task="text-classification")
    assert validation.version_validate(version.pk) == VersionStatus.FAILED
    version.refresh_from_db()
    assert "lack" in version.status_reason and "classifier" in version.status_reason


def test_a_model_that_fails_on_its_example_fails_validation(owner, hf_model, hf_dirs, tmp_path):
    version = upload(owner, hf_model, directory_zip(hf_dirs[TextTask.FILL_MASK], tmp_path / "m.zip"), task="fill-mask")
    # An example the upload checks did not catch (they refuse this one today).
    example = [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["No mask token here."]}]
    ModelVersion.objects.filter(pk=version.pk).update(example_input=example)
    assert validation.version_validate(version.pk) == VersionStatus.FAILED
    version.refresh_from_db()
    assert "fill-mask model failed on the text 'No mask token here.'" in version.status_reason
    assert "0 mask tokens" in version.status_reason
