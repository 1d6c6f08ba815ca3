"""Fixtures and helpers of the batch-job tests."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from inference import jobs, tasks
from inference.cache import model_cache
from inference.models import BatchJob
from portal.text_models import bert_save
from registry.text_tasks import TextTask
from tests.inference.generation_fakes import generation_redis, generation_redis_socket  # noqa: F401 - fixtures

JOBS = "/api/v1/jobs/"
LABELS = ["setosa", "versicolor", "virginica"]
TAGS = ["O", "B-PER", "B-LOC"]


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny real BERT directories (save_pretrained, safetensors, a trained tokenizer), one per text task."""
    root = tmp_path_factory.mktemp("hf")
    return {
        TextTask.FILL_MASK: bert_save(root / "fill-mask", "fill-mask"),
        TextTask.TEXT_CLASSIFICATION: bert_save(root / "classifier", "text-classification"),
        TextTask.TOKEN_CLASSIFICATION: bert_save(root / "tagger", "token-classification", labels=TAGS),
        TextTask.FEATURE_EXTRACTION: bert_save(root / "encoder", "feature-extraction"),
    }


@pytest.fixture
def fresh_model_cache() -> Any:
    # Version ids are reused after each test's rollback; a cached model must not outlive its test.
    model_cache().reset()
    yield
    model_cache().reset()


@pytest.fixture
def version(ready_version: Any) -> Any:
    return ready_version(labels=LABELS)


@pytest.fixture
def net(model_files: dict[str, Path]) -> Any:
    return torch.jit.load(str(model_files["torchscript"]))


def rows(n: int = 10, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, 4)) + 5).astype(np.float32)


def forward(net: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def jsonl_bytes(x: np.ndarray, name: str = "features") -> bytes:
    return b"".join(json.dumps({name: row.tolist()}).encode() + b"\n" for row in x)


def submit(actor: Any, content: bytes, filename: str = "inputs.npz", **fields: Any) -> BatchJob:
    fields.setdefault("version", 1)
    return jobs.job_submit(
        actor=actor, model_name="iris", file=SimpleUploadedFile(filename, content), filename=filename, **fields
    )


def run(job: BatchJob) -> BatchJob:
    tasks.batch_job_run(str(job.pk))
    job.refresh_from_db()
    return job


def stored_job_files() -> list[Path]:
    root = Path(settings.STORAGES["artifacts"]["OPTIONS"]["location"]) / "jobs"
    return sorted(path for path in root.rglob("*") if path.is_file()) if root.exists() else []


def result_npz(job: BatchJob) -> dict[str, np.ndarray]:
    with jobs.job_result_open(job) as stream, np.load(stream, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def result_lines(job: BatchJob) -> list[dict[str, Any]]:
    with jobs.job_result_open(job) as stream:
        return [json.loads(line) for line in stream.read().splitlines()]
