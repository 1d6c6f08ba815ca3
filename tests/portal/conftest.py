"""Fixtures of the portal tests: the text demo's trained models, and text versions uploaded and validated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from portal import demo_text
from registry.models import ModelVersion
from registry.text_tasks import TextTask


@pytest.fixture(scope="session")
def demo_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's fill-mask and sentiment directories, trained once per session (a few seconds)."""
    root = tmp_path_factory.mktemp("text-demo")
    return {
        TextTask.FILL_MASK: demo_text.fill_mask_build(root / "fill-mask"),
        TextTask.TEXT_CLASSIFICATION: demo_text.sentiment_build(root / "sentiment"),
    }


@pytest.fixture
def text_version(owner: Any, tmp_path: Path) -> Callable[..., ModelVersion]:
    """Upload a model directory as a new model's v1 the way the demo seeds one (zip, upload, validate, production)."""

    def make(name: str, task: str, directory: Path) -> ModelVersion:
        demo = demo_text.TextDemo(name, task, f"{name} for a test", "v1", ("test",), lambda _: directory)
        model = demo_text.text_demo_upload(owner, demo, tmp_path)
        return model.versions.get(version=1)

    return make
