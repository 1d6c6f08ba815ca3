"""Helpers of the monitoring tests: labelled iris-like data and the files that carry it."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile

from portal import demo
from tests.e2e.conftest import chromium, page  # noqa: F401 - the browser fixtures, for test_browser.py
from tests.worker import METRICS_TOKEN


@pytest.fixture(autouse=True)
def _metrics_token(settings: Any) -> None:
    """/metrics answers the tests' scraper token (no address is trusted)."""
    settings.METRICS_TOKEN = METRICS_TOKEN


def npz_file(name: str = "data.npz", **arrays: Any) -> SimpleUploadedFile:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return SimpleUploadedFile(name, buffer.getvalue())


@pytest.fixture
def iris_data() -> tuple[np.ndarray, np.ndarray]:
    """120 labelled rows from the same clusters the demo model was trained on."""
    features, labels = demo._iris_like_data(samples_per_class=40, seed=3)
    return features.numpy().astype(np.float32), labels.numpy().astype(np.int64)


def direct_outputs(path: Any, features: np.ndarray) -> np.ndarray:
    """What the model file computes on the features, in this process."""
    module = torch.jit.load(str(path))
    with torch.inference_mode():
        return module(torch.from_numpy(features)).numpy()
