"""A model host's memory: the cap, and an out-of-memory kill named as such (real host processes)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inference import validation
from inference.cache import model_source
from inference.runs.lifecycle import out_of_memory
from inference.sandbox.client import SandboxedModel
from inference.sandbox.memory import DeathWatch, HostOutOfMemory, memory_cgroup, oom_kills
from portal import demo
from registry import services
from registry.models import VersionStatus
from tests.conftest import upload_file

pytestmark = pytest.mark.django_db


class Hoards(torch.nn.Module):
    """A model whose forward fills (and so really uses) `megabytes` of memory when asked (features above 100)."""

    def __init__(self, megabytes: int) -> None:
        super().__init__()
        self.megabytes = megabytes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        size = self.megabytes * 1024 * 256 if bool(features.max() > 100) else 1
        hoard = torch.ones(size, dtype=torch.float32)
        return features[:, :1] * 0 + hoard[:1]


@pytest.fixture
def hoarder(settings: Any, owner: Any, tmp_path: Path) -> Any:
    settings.MODEL_SANDBOX = "require"

    def version_of(megabytes: int) -> Any:
        model = services.model_create(actor=owner, name=f"hoarder-{megabytes}")
        path = demo.save_torchscript(Hoards(megabytes), tmp_path / f"hoarder-{megabytes}.pt")
        version = upload_file(owner, model, path, enqueue=False)
        assert validation.version_validate(version.pk) == VersionStatus.READY
        return version

    return version_of


def test_the_oom_kill_counter_is_read_from_cgroup_v2_and_v1_files(tmp_path):
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    v2.mkdir(), v1.mkdir()
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n")
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n")
    assert oom_kills(v2) == 2 and oom_kills(v1) == 7
    assert oom_kills(tmp_path) is None and oom_kills(None) is None


def test_a_host_over_its_memory_cap_fails_with_out_of_memory_and_lives_on(hoarder, settings):
    settings.MODEL_HOST_MEMORY_MB = 1536
    model = SandboxedModel(model_source(hoarder(4096).pk))
    try:
        with pytest.raises(RuntimeError, match="can't allocate memory") as failure:
            model.predict({"features": np.full((1, 4), 1000, np.float32)})
        assert out_of_memory(failure.value), failure.value
        assert model.host.host.alive(), "an allocation error must not kill the host"
    finally:
        model.close()


@contextlib.contextmanager
def memory_cgroup_limited(megabytes: int) -> Iterator[Path]:
    """A private memory cgroup beside this process's, capped at `megabytes`; removed afterwards."""
    parent = memory_cgroup()
    if parent is None or not os.access(parent, os.W_OK):
        pytest.skip("no writable memory cgroup here (needs root and cgroup v1 or v2 with the memory controller)")
    group = parent / f"maas-oom-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        if (group / "memory.max").exists():
            (group / "memory.max").write_text(str(megabytes * 1024 * 1024))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")
        else:
            (group / "memory.limit_in_bytes").write_text(str(megabytes * 1024 * 1024))
            with contextlib.suppress(OSError):
                (group / "memory.swappiness").write_text("0")
        yield group
    finally:
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                os.kill(int(pid), 9)
        for _ in range(50):
            with contextlib.suppress(OSError):
                group.rmdir()
                break
            os.sched_yield()


def test_a_host_the_kernel_kills_for_memory_is_named_out_of_memory(hoarder):
    """A real kernel OOM kill: the host moved into a capped cgroup, then made to fill 1 GB."""
    model = SandboxedModel(model_source(hoarder(1024).pk))
    host = model.host.host
    try:
        with memory_cgroup_limited(256) as group:
            (group / "cgroup.procs").write_text(str(host.process.pid))
            host.watch = DeathWatch(host.process.pid)  # watch it where it now is, as host_start does
            assert memory_cgroup(host.process.pid) == group
            with pytest.raises(HostOutOfMemory) as failure:
                model.predict({"features": np.full((1, 4), 1000, np.float32)})
            assert "out-of-memory killer" in str(failure.value) and out_of_memory(failure.value)
    finally:
        model.close()
