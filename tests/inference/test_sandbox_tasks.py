"""Validation and tracked runs through a sandboxed task host (real child processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inference import validation
from inference.cache import model_source
from inference.sandbox.client import SandboxedModel
from portal import demo
from registry import services
from registry.models import ModelVersion, VersionStatus
from tests.conftest import upload_file

pytestmark = pytest.mark.django_db


@pytest.fixture
def sandboxed(settings: Any) -> None:
    settings.MODEL_SANDBOX = "require"


class ReadsFile(torch.nn.Module):
    """A model whose forward returns the first bytes of a file as floats (the attack of issue 12)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        secret = torch.from_file(self.path, shared=False, size=16, dtype=torch.uint8)
        return features[:, :1] * 0 + secret.to(torch.float32).unsqueeze(0)


def test_validation_in_the_sandbox_makes_a_good_model_ready(sandboxed, owner, registered_model, model_files):
    version = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    assert validation.version_validate(version.pk) == VersionStatus.READY
    version.refresh_from_db()
    assert version.validation["batching"] is True


def test_a_model_reading_the_secret_key_fails_validation_in_the_sandbox(sandboxed, settings, owner, tmp_path):
    secret = Path(settings.DATA_DIR) / "secret_key"
    secret.write_text("s3cr3t-key-of-the-portal-0123456789")
    model = services.model_create(actor=owner, name="thief")
    path = demo.save_torchscript(ReadsFile(str(secret)), tmp_path / "thief.pt")
    version = upload_file(owner, model, path, enqueue=False)
    assert validation.version_validate(version.pk) == VersionStatus.FAILED
    reason = ModelVersion.objects.get(pk=version.pk).status_reason
    assert "Permission denied" in reason, reason


def test_a_sandboxed_model_predicts_like_the_loaded_one(sandboxed, ready_version, model_files):
    version = ready_version()
    model = SandboxedModel(model_source(version.pk))
    try:
        features = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
        [(_, datatype, array)] = model.predict({"features": features})
        module = torch.jit.load(str(model_files["torchscript"]))
        assert datatype == "FP32" and np.allclose(array, module(torch.from_numpy(features)).detach().numpy())
        with pytest.raises(RuntimeError):
            model.predict({"features": np.ones((2, 7), np.float32)})
    finally:
        model.close()
    assert model.host.host.process.poll() is not None
