"""The upload attacks and faults of issue 12 against a live HTTP server: bombs, prefixed zips,
a full or read-only store (a real tmpfs of its own), tampered artifacts, alias guards and
Idempotency-Key retries. Run on both backends (embedded, and PostgreSQL + Redis)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

from accounts import services as token_services
from portal import demo
from registry import services
from registry.artifacts import artifact_storage
from registry.models import AuditEvent, ModelAlias, ModelVersion
from tests.conftest import SIGNATURE
from tests.registry.archive_bombs import declared_bomb, many_entries, tar_with_links, torchscript_entries

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
MOUNT, UMOUNT = shutil.which("mount"), shutil.which("umount")


@pytest.fixture
def http(live_server: Any, owner: Any, broker_url: str) -> requests.Session:
    """A requests session against the live server with a real API token (and a broker for accepted uploads)."""
    _, secret = token_services.token_create(user=owner, name="hardening")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {secret}"
    session.base_url = f"{live_server.url}/api/v1/models"  # type: ignore[attr-defined]
    return session


def post_file(http: requests.Session, data: bytes, name: str = "model.pt", key: str | None = None) -> requests.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return http.post(f"{http.base_url}/iris/versions/", files={"file": (name, data)},  # type: ignore[attr-defined]
                     data={"signature": json.dumps(SIGNATURE)}, headers=headers, timeout=120)  # fmt: skip


_stored_before: set[Path] = set()


def _stored_now() -> set[Path]:
    return {path for path in Path(artifact_storage().location).rglob("*") if path.is_file()}


@pytest.fixture(autouse=True)
def _store_baseline() -> None:
    """The store is shared with other tests' models and jobs: only files added by this test count."""
    _stored_before.clear()
    _stored_before.update(_stored_now())


def stored_files() -> list[Path]:
    return sorted(_stored_now() - _stored_before)


def assert_refused(response: requests.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    for fragment in fragments:
        assert fragment in response.json()["error"], response.json()["error"]
    assert not ModelVersion.objects.exists()
    assert stored_files() == []


def test_zip_bombs_are_refused_before_storing(http, registered_model, model_files, settings) -> None:
    torchscript = model_files["torchscript"]
    bomb = declared_bomb(torchscript, 12_500_000_000)
    assert_refused(post_file(http, bomb), 400, "TORCH_ARCHIVE_MAX_BYTES", "before anything was stored")
    assert_refused(post_file(http, declared_bomb(torchscript, 1024**3)), 400, "ARCHIVE_MAX_RATIO")
    # 100,001 entries, with the default limit (judged from the end record, before the directory is read).
    assert_refused(post_file(http, many_entries(torchscript, 100_001)), 400, "TORCH_ARCHIVE_MAX_ENTRIES")
    settings.TORCH_ARCHIVE_MAX_ENTRIES = len(torchscript_entries(torchscript)) - 1
    assert_refused(post_file(http, torchscript.read_bytes()), 400, "TORCH_ARCHIVE_MAX_ENTRIES")


def test_a_tar_with_links_before_a_valid_zip_is_refused(http, registered_model, model_files) -> None:
    prefixed = tar_with_links(model_files["torchscript"].read_bytes())
    assert_refused(post_file(http, prefixed), 400, "zip from its first byte")


# --- a store that is full or unavailable: a real tmpfs of a few megabytes ---------------------------


@pytest.fixture
def small_store(tmp_path: Path, settings: Any) -> Iterator[Path]:
    """Artifact storage on a private 1 MiB tmpfs, unmounted whatever happens."""
    mount = tmp_path / "store"
    mount.mkdir()
    if os.geteuid() != 0 or MOUNT is None or UMOUNT is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run([MOUNT, "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        settings.STORAGES = {
            **settings.STORAGES,
            "artifacts": {
                "BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": str(mount)},
            },
        }
        yield mount
    finally:
        subprocess.run([UMOUNT, "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def large_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real TorchScript model of ~1.5 MB, larger than the small store."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 600), torch.nn.Linear(600, 600), torch.nn.Linear(600, 3))
    return demo.save_torchscript(net, tmp_path_factory.mktemp("large") / "large.pt")


def files_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def test_a_full_store_answers_507_and_keeps_nothing(http, registered_model, small_store, large_model) -> None:
    assert large_model.stat().st_size > 1024**2
    response = post_file(http, large_model.read_bytes(), "large.pt")
    assert response.status_code == 507, response.text
    assert "artifact store is full" in response.json()["error"] and "nothing was kept" in response.json()["error"]
    assert files_under(small_store) == []
    assert os.statvfs(small_store).f_bfree == os.statvfs(small_store).f_blocks  # not a byte left behind
    assert not ModelVersion.objects.exists()
    assert not AuditEvent.objects.filter(action="version.upload").exists()


def test_a_full_temporary_upload_directory_answers_507(http, registered_model, small_store, large_model, settings):
    settings.FILE_UPLOAD_TEMP_DIR = str(small_store)
    response = post_file(http, large_model.read_bytes(), "large.pt")
    assert response.status_code == 507, response.text
    assert "temporary upload space is full" in response.json()["error"]
    assert files_under(small_store) == [] and not ModelVersion.objects.exists()


def test_a_read_only_store_answers_503_and_keeps_nothing(http, registered_model, small_store, model_files) -> None:
    subprocess.run([str(MOUNT), "-o", "remount,ro", str(small_store)], check=True)
    response = post_file(http, model_files["torchscript"].read_bytes())
    assert response.status_code == 503, response.text
    assert "artifact store is unavailable" in response.json()["error"]
    assert files_under(small_store) == [] and not ModelVersion.objects.exists()
    subprocess.run([str(MOUNT), "-o", "remount,rw", str(small_store)], check=True)
    assert post_file(http, model_files["torchscript"].read_bytes()).status_code == 201
    assert len(files_under(small_store)) == 1


# --- downloads --------------------------------------------------------------------------------------


def test_a_tampered_artifact_is_not_downloaded(http, registered_model, ready_version) -> None:
    version = ready_version()
    url = f"{http.base_url}/iris/versions/{version.version}/download/"  # type: ignore[attr-defined]
    good = http.get(url, timeout=30)
    assert good.status_code == 200 and hashlib.sha256(good.content).hexdigest() == good.headers["X-Checksum-SHA256"]
    path = Path(artifact_storage().path(version.artifact))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    bad = http.get(url, timeout=30)
    assert bad.status_code == 409, bad.status_code
    assert bad.headers["Content-Type"].startswith("application/json")
    assert "does not match its sha256" in bad.json()["error"] and "refused" in bad.json()["error"]


# --- aliases and Idempotency-Key ---------------------------------------------------------------------


def test_archiving_the_production_version_is_409_until_forced(http, owner, registered_model, ready_version) -> None:
    version = ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=version.version)
    base = f"{http.base_url}/iris/versions/{version.version}"  # type: ignore[attr-defined]
    refused = http.post(f"{base}/archive/", timeout=30)
    assert refused.status_code == 409 and "'production'" in refused.json()["error"]
    assert http.delete(f"{base}/", timeout=30).status_code == 409
    assert ModelAlias.objects.filter(name="production").exists()
    forced = http.post(f"{base}/archive/", json={"force": True}, timeout=30)
    assert forced.status_code == 200 and forced.json()["status"] == "archived"
    assert not ModelAlias.objects.exists()
    assert AuditEvent.objects.filter(action="alias.delete", after__forced=True).exists()
    bad_name = http.put(f"{http.base_url}/iris/aliases/latest/", json={"version": 1}, timeout=30)  # type: ignore[attr-defined]
    assert bad_name.status_code == 400 and "reserved word" in bad_name.json()["error"]


def test_a_retried_upload_with_its_key_creates_one_version(http, registered_model, model_files) -> None:
    data, key = model_files["torchscript"].read_bytes(), str(uuid.uuid4())
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post_file(http, data, key=key), range(4)))
    assert {answer.status_code for answer in answers} <= {201, 409}, [answer.text for answer in answers]
    created = [answer.json() for answer in answers if answer.status_code == 201]
    assert created and all(body == created[0] for body in created)
    retried = post_file(http, data, key=key)
    assert retried.status_code == 201 and retried.json() == created[0]
    assert retried.headers["Idempotency-Replayed"] == "true"
    assert ModelVersion.objects.count() == 1
    other = post_file(http, model_files["exported_program"].read_bytes(), "other.pt2", key=key)
    assert other.status_code == 422 and "different request" in other.json()["error"]
    assert post_file(http, data, key=str(uuid.uuid4())).status_code == 201
    assert ModelVersion.objects.count() == 2


def test_a_retried_model_creation_with_its_key_creates_one_model(http, owner) -> None:
    url = f"{http.base_url}/"  # type: ignore[attr-defined]
    first = http.post(url, json={"name": "rose"}, headers={"Idempotency-Key": "rose-1"}, timeout=30)
    again = http.post(url, json={"name": "rose"}, headers={"Idempotency-Key": "rose-1"}, timeout=30)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    unkeyed = http.post(url, json={"name": "rose"}, timeout=30)
    assert unkeyed.status_code == 409
