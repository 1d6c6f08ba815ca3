"""Artifacts on an S3-compatible object store: django-storages against moto's real HTTP server.

The storage is configured the way a deployment does it (ARTIFACT_STORAGE=s3 and the
ARTIFACT_S3_* variables, read by portal/settings.py), so these tests cover the settings,
the upload, the worker's download-once cache and its refusal of bytes that changed.
"""

from __future__ import annotations

import runpy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import boto3
import pytest
from moto.server import ThreadedMotoServer

from inference import validation
from inference.cache import ModelCache, ModelUnavailable
from registry.artifacts import ArtifactIntegrityError, artifact_delete, artifact_fetch
from registry.models import ModelVersion, VersionStatus
from tests.conftest import upload_file

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
PREFIX = "artifacts"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free local port, for this module."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class Bucket(NamedTuple):
    client: Any  # boto3's S3 client, for looking behind the storage's back
    name: str


@pytest.fixture
def bucket(s3_endpoint: str, settings: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Bucket:
    """A fresh bucket, and the artifact storage pointed at it through the portal's own settings."""
    name = f"maas-{uuid.uuid4().hex[:12]}"
    environment = {
        "ARTIFACT_STORAGE": "s3",
        "ARTIFACT_S3_BUCKET": name,
        "ARTIFACT_S3_ENDPOINT_URL": s3_endpoint,
        "ARTIFACT_S3_REGION": REGION,
        "ARTIFACT_S3_ACCESS_KEY_ID": "test-key",
        "ARTIFACT_S3_SECRET_ACCESS_KEY": "test-secret",
        "ARTIFACT_S3_PREFIX": PREFIX,
        "PORTAL_DATA_DIR": str(tmp_path / "settings-probe"),
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    configured = runpy.run_path(str(ROOT / "portal" / "settings.py"))["STORAGES"]["artifacts"]
    assert configured["BACKEND"] == "storages.backends.s3.S3Storage"
    settings.STORAGES = {**settings.STORAGES, "artifacts": configured}
    client = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name=REGION, aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    )  # fmt: skip
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return Bucket(client, name)


def _objects(bucket: Bucket) -> list[str]:
    return [item["Key"] for item in bucket.client.list_objects_v2(Bucket=bucket.name).get("Contents", [])]


def _cached(settings: Any) -> list[Path]:
    directory = Path(settings.DATA_DIR) / "artifact-cache"
    return sorted(directory.iterdir()) if directory.exists() else []


def test_an_upload_lands_in_the_bucket_and_validates_from_there(bucket, owner, registered_model, model_files, settings):
    version = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    assert _objects(bucket) == [f"{PREFIX}/{version.artifact}"]
    assert version.artifact.startswith(f"models/{registered_model.pk}/") and version.artifact.endswith("/iris.pt")

    assert validation.version_validate(version.pk) == VersionStatus.READY
    # Validation ran on a local copy named by the hash, downloaded from the bucket.
    assert [path.name for path in _cached(settings)] == [version.sha256]


def test_a_worker_downloads_an_artifact_once_and_serves_from_its_cache(
    bucket, owner, registered_model, model_files, settings
):
    version = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    first = artifact_fetch(version.artifact, version.sha256)
    assert first.read_bytes() == model_files["torchscript"].read_bytes()

    # With the object gone from the bucket, only the cache can answer: nothing is downloaded again.
    bucket.client.delete_object(Bucket=bucket.name, Key=f"{PREFIX}/{version.artifact}")
    assert artifact_fetch(version.artifact, version.sha256) == first
    assert validation.version_validate(version.pk) == VersionStatus.READY
    model = ModelCache(budget_bytes=1 << 30).get(version.pk)
    assert model.model_name == "iris" and model.version == version.version
    assert _cached(settings) == [first]


def test_bytes_changed_in_the_bucket_are_refused_and_not_cached(bucket, owner, registered_model, model_files, settings):
    version = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    tampered = model_files["exported_program"].read_bytes()
    bucket.client.put_object(Bucket=bucket.name, Key=f"{PREFIX}/{version.artifact}", Body=tampered)

    with pytest.raises(ArtifactIntegrityError, match="does not match its sha256"):
        artifact_fetch(version.artifact, version.sha256)
    # Neither the bad bytes nor a half-written temporary file stay behind.
    assert _cached(settings) == []

    assert validation.version_validate(version.pk) == VersionStatus.FAILED
    assert "does not match its sha256" in ModelVersion.objects.get(pk=version.pk).status_reason
    with pytest.raises(ModelUnavailable):
        ModelCache(budget_bytes=1 << 30).get(version.pk)
    assert _cached(settings) == []


def test_a_ready_version_whose_object_was_replaced_is_not_loaded_by_a_fresh_worker(
    bucket, owner, registered_model, model_files, settings
):
    version = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    assert validation.version_validate(version.pk) == VersionStatus.READY
    # A fresh worker (another host: an empty cache) meets bytes replaced after validation.
    for path in _cached(settings):
        path.unlink()
    bucket.client.put_object(Bucket=bucket.name, Key=f"{PREFIX}/{version.artifact}", Body=b"PK\x03\x04 not the model")
    with pytest.raises(ModelUnavailable, match="sha256"):
        ModelCache(budget_bytes=1 << 30).get(version.pk)


def test_deleting_an_artifact_removes_the_object_and_a_missing_one_is_no_error(
    bucket, owner, registered_model, model_files
):
    version = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    artifact_delete(version.artifact)
    assert _objects(bucket) == []
    artifact_delete(version.artifact)
