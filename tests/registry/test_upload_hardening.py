"""Uploads that must be refused before anything is stored, and the registry rules around them.

Zip bombs (declared size, entry count, compression ratio) for every archive format, zips
with data before them, MODEL_UPLOAD_POLICY, verified downloads, aliases that guard their
version, reserved alias names and Idempotency-Key. The same attacks against a live server
are in tests/integration/test_upload_hardening.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from core.errors import Conflict, InvalidInput, PermissionDenied
from inference import validation
from portal.text_models import bert_save, directory_zip
from registry import archives, services
from registry.archives import RATIO_FLOOR_BYTES, archive_scan
from registry.artifacts import ArtifactIntegrityError, archive_check, artifact_open_verified, artifact_storage
from registry.huggingface import hf_wanted
from registry.idempotency import ABANDONED_AFTER, IdempotencyKey, request_fingerprint
from registry.models import AuditEvent, ModelAlias, ModelVersion, RegisteredModel
from tests.conftest import SIGNATURE, multipart, upload_file
from tests.registry.archive_bombs import (
    declared_bomb,
    deflated,
    many_entries,
    stored,
    tar_with_links,
    torchscript_entries,
    zip_of,
)

pytestmark = pytest.mark.django_db
MODELS = "/api/v1/models/"
BOMB_DECLARED = 12_500_000_000


def refused(data: bytes, *fragments: str, **fields: Any) -> str:
    with pytest.raises(InvalidInput) as caught:
        archive_check(io.BytesIO(data), **fields)
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value.message


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert_save(tmp_path_factory.mktemp("hf-hardening") / "tiny-bert", "fill-mask")


def hf_zip_entries(directory: Path) -> list[Any]:
    return [stored(f"tiny-bert/{path.name}", path.read_bytes()) for path in sorted(directory.iterdir())]


# --- zip bombs ------------------------------------------------------------------------------


def test_the_defaults_are_sane() -> None:
    assert django_settings.TORCH_ARCHIVE_MAX_ENTRIES == 20000
    assert django_settings.TORCH_ARCHIVE_MAX_BYTES == 2 * django_settings.MODEL_UPLOAD_MAX_BYTES
    assert django_settings.HF_ARCHIVE_MAX_ENTRIES == 2000
    assert django_settings.ARCHIVE_MAX_RATIO == 100
    assert django_settings.MODEL_UPLOAD_POLICY == "maintainers"


def test_torchscript_declaring_12_5_gb_in_a_tiny_archive_is_refused(model_files: dict[str, Path]) -> None:
    bomb = declared_bomb(model_files["torchscript"], BOMB_DECLARED)
    assert len(bomb) < 80 * 1024
    refused(bomb, "TORCH_ARCHIVE_MAX_BYTES", "before anything was stored")


def test_torchscript_bomb_under_the_size_limit_is_refused_by_its_ratio(model_files: dict[str, Path]) -> None:
    refused(declared_bomb(model_files["torchscript"], 1024**3), "ARCHIVE_MAX_RATIO", "1.0 GiB")


def test_a_real_compressible_stream_past_the_floor_is_refused_by_its_ratio(model_files: dict[str, Path]) -> None:
    entries = torchscript_entries(model_files["torchscript"])
    zeros = deflated(entries[0].name.split("/")[0] + "/data/77", b"\0" * (RATIO_FLOOR_BYTES + 1024**2))
    refused(zip_of([*entries, zeros]), "ARCHIVE_MAX_RATIO")


def test_100001_entries_are_refused_with_the_default_limit(model_files: dict[str, Path]) -> None:
    refused(many_entries(model_files["torchscript"], 100_001), "more than 20000 entries", "TORCH_ARCHIVE_MAX_ENTRIES")


def test_the_entry_limit_is_a_setting(model_files: dict[str, Path], settings: Any) -> None:
    count = len(torchscript_entries(model_files["torchscript"]))
    settings.TORCH_ARCHIVE_MAX_ENTRIES = count
    assert archive_check(io.BytesIO(many_entries(model_files["torchscript"], count))).format == "torchscript"
    refused(many_entries(model_files["torchscript"], count + 1), f"more than {count} entries")


def test_a_central_directory_larger_than_its_cap_is_not_read(model_files, monkeypatch) -> None:
    monkeypatch.setattr(archives, "MAX_ZIP_DIRECTORY_BYTES", 200)
    refused(model_files["torchscript"].read_bytes(), "central directory takes")


def test_exported_program_obeys_the_same_limits(model_files: dict[str, Path], settings: Any) -> None:
    entries = torchscript_entries(model_files["exported_program"])
    root = entries[0].name.split("/")[0]
    refused(zip_of([*entries, deflated(f"{root}/data/9", b"\0" * 1000, declared=BOMB_DECLARED)]),
            "TORCH_ARCHIVE_MAX_BYTES")  # fmt: skip
    settings.TORCH_ARCHIVE_MAX_ENTRIES = len(entries) - 1
    refused(model_files["exported_program"].read_bytes(), "TORCH_ARCHIVE_MAX_ENTRIES")


def test_huggingface_zip_bomb_is_refused_before_reading(hf_dir: Path) -> None:
    bomb = zip_of([*hf_zip_entries(hf_dir), deflated("tiny-bert/notes.txt", b"\0" * 1000, declared=BOMB_DECLARED)])
    refused(bomb, "HF_ARCHIVE_MAX_BYTES", format="huggingface")


def test_huggingface_zip_over_the_ratio_is_refused(hf_dir: Path) -> None:
    bomb = zip_of([*hf_zip_entries(hf_dir), deflated("tiny-bert/notes.txt", b"\0" * 1000, declared=1024**3)])
    refused(bomb, "ARCHIVE_MAX_RATIO", format="huggingface")


def test_huggingface_tar_gz_of_zeros_is_refused_at_its_header(hf_dir: Path) -> None:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1) as packed,
        tarfile.open(fileobj=packed, mode="w") as tar,
    ):
        for path in sorted(hf_dir.iterdir()):
            tar.add(path, f"tiny-bert/{path.name}")
        zeros = tarfile.TarInfo("tiny-bert/zeros.txt")
        zeros.size = 64 * 1024**2
        tar.addfile(zeros, io.BytesIO(b"\0" * zeros.size))
    assert len(buffer.getvalue()) < 1024**2
    refused(buffer.getvalue(), "ARCHIVE_MAX_RATIO")


@pytest.mark.parametrize("stored_as", ["bomb", "prefixed"])
def test_a_version_stored_before_the_limits_is_not_loaded_past_them(owner, registered_model, model_files, stored_as):
    """A bomb already in storage (uploaded before these checks) fails validation instead of loading."""
    data = (
        declared_bomb(model_files["torchscript"], BOMB_DECLARED)
        if stored_as == "bomb"
        else tar_with_links(model_files["torchscript"].read_bytes())
    )
    path = artifact_storage().save(f"models/{registered_model.pk}/old/model.pt", io.BytesIO(data))
    version = ModelVersion.objects.create(model=registered_model, version=1, format="torchscript", artifact=path,
                                          sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                                          signature=SIGNATURE, created_by=owner)  # fmt: skip
    assert validation.version_validate(version.pk) == "failed"
    version.refresh_from_db()
    expected = "TORCH_ARCHIVE_MAX_BYTES" if stored_as == "bomb" else "does not begin with a zip entry"
    assert expected in version.status_reason


def test_a_tar_gz_whose_pax_header_claims_megabytes_is_refused_before_reading_it(hf_dir: Path) -> None:
    """tarfile keeps a pax header in memory whole: 512 MiB of one cost 1.9 GB and 39 s before."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb") as packed,
        tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(hf_dir.iterdir()):
            info = tar.gettarinfo(path, f"tiny-bert/{path.name}")
            if path.name == "config.json":
                info.pax_headers = {"comment": "x" * 64 * 1024**2}
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    refused(buffer.getvalue(), "tar headers", "decompression bomb")


# --- a zip from its first byte -------------------------------------------------------------------


def test_tar_with_links_before_a_valid_zip_is_refused(model_files: dict[str, Path]) -> None:
    prefixed = tar_with_links(model_files["torchscript"].read_bytes())
    refused(prefixed, "zip from its first byte")
    refused(prefixed, "neither a .zip nor a .tar.gz", format="huggingface")


def test_prepended_bytes_with_rebased_offsets_are_refused(model_files: dict[str, Path]) -> None:
    entries = torchscript_entries(model_files["torchscript"])
    shifted = b"PK\x03\x04" + b"\0" * 60 + zip_of(entries)  # a fake first header, then the real zip
    refused(shifted, "not where its end record says")


def test_overlapping_entries_are_refused(model_files: dict[str, Path]) -> None:
    entries = torchscript_entries(model_files["torchscript"])
    refused(zip_of([*entries, entries[0]], overlap_last=True), "overlaps")


def test_bytes_hidden_between_entries_are_refused(model_files: dict[str, Path]) -> None:
    entries = torchscript_entries(model_files["torchscript"])
    assert archive_check(io.BytesIO(zip_of(entries))).format == "torchscript"
    refused(zip_of(entries, hidden=b"#!/bin/sh\nexit 0\n"), "unexplained bytes")


def test_huggingface_zip_with_prepended_data_is_refused_by_scan_and_unpack(hf_dir: Path, tmp_path: Path) -> None:
    good = directory_zip(hf_dir, tmp_path / "model.zip").read_bytes()
    assert archive_scan(io.BytesIO(good), hf_wanted).files
    with pytest.raises(InvalidInput, match=r"neither a \.zip nor a \.tar\.gz"):
        archive_scan(io.BytesIO(tar_with_links(good)), hf_wanted)


def test_refused_bomb_leaves_nothing_stored(
    owner: Any, registered_model: RegisteredModel, model_files, tmp_path
) -> None:
    path = tmp_path / "bomb.pt"
    path.write_bytes(declared_bomb(model_files["torchscript"], BOMB_DECLARED))
    with pytest.raises(InvalidInput, match="TORCH_ARCHIVE_MAX_BYTES"):
        upload_file(owner, registered_model, path, enqueue=False)
    assert not ModelVersion.objects.exists()
    assert not any(Path(artifact_storage().location).rglob("*.pt"))


# --- MODEL_UPLOAD_POLICY ---------------------------------------------------------------------------


@pytest.fixture
def maintainer(owner: Any, member: Any, registered_model: RegisteredModel) -> Any:
    services.role_grant(actor=owner, model=registered_model, role="maintainer", username=member.username)
    return member


@pytest.mark.parametrize("policy", ["owners", "admins"])
def test_policy_refuses_code_formats_to_maintainers(policy, maintainer, registered_model, model_files, settings, hf_dir,
                                                    tmp_path) -> None:  # fmt: skip
    settings.MODEL_UPLOAD_POLICY = policy
    for name in ("torchscript", "exported_program"):
        with pytest.raises(PermissionDenied, match=f"MODEL_UPLOAD_POLICY='{policy}'"):
            upload_file(maintainer, registered_model, model_files[name], enqueue=False)
    # Declared: refused before the file is read.
    with pytest.raises(PermissionDenied, match="carry code"):
        upload_file(maintainer, registered_model, model_files["torchscript"], format="torchscript", enqueue=False)
    hf = directory_zip(hf_dir, tmp_path / "tiny-bert.zip")
    assert upload_file(maintainer, registered_model, hf, signature=None, enqueue=False).format == "huggingface"
    assert AuditEvent.objects.filter(action="authz.denied", actor=maintainer).count() == 3


def test_owners_policy_lets_owners_and_admins_upload_code(owner, registered_model, model_files, settings,
                                                          django_user_model) -> None:  # fmt: skip
    settings.MODEL_UPLOAD_POLICY = "owners"
    assert upload_file(owner, registered_model, model_files["torchscript"], enqueue=False).version == 1
    settings.MODEL_UPLOAD_POLICY = "admins"
    with pytest.raises(PermissionDenied, match="administrators only"):
        upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    admin = django_user_model.objects.create_user("ada", password="admin-pass-123", is_staff=True)
    assert upload_file(admin, registered_model, model_files["torchscript"], enqueue=False).version == 2


def test_policy_over_rest_is_403_naming_it(api, maintainer, registered_model, model_files, settings) -> None:
    settings.MODEL_UPLOAD_POLICY = "owners"
    response = api(maintainer).post(
        f"{MODELS}iris/versions/", multipart(model_files["torchscript"], signature=SIGNATURE)
    )
    assert response.status_code == 403 and "MODEL_UPLOAD_POLICY='owners'" in response.json()["error"]
    assert not ModelVersion.objects.exists()


def test_upload_page_states_the_policy_and_offers_only_what_the_user_may_upload(
    client, owner, maintainer, outsider, registered_model, settings
) -> None:
    settings.MODEL_UPLOAD_POLICY = "owners"
    client.force_login(maintainer)
    page = client.get("/models/iris/upload/").content.decode()
    assert "MODEL_UPLOAD_POLICY=owners" in page and "the model&#x27;s owners and administrators" in page
    assert "You may upload Hugging Face archives and ONNX models only." in page
    assert 'value="torchscript"' not in page and 'value="huggingface"' in page
    client.force_login(owner)
    page = client.get("/models/iris/upload/").content.decode()
    assert 'value="torchscript"' in page and "Hugging Face archives and ONNX models only" not in page
    services.model_update(actor=owner, model=registered_model, visibility="internal")
    client.force_login(outsider)
    page = client.get("/models/iris/upload/").content.decode()
    assert 'id="upload-form"' not in page and "not upload versions" in page


# --- downloads are verified ---------------------------------------------------------------------


def test_download_of_a_tampered_artifact_is_refused(api, owner, registered_model, model_files) -> None:
    version = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    response = api(owner).get(f"{MODELS}iris/versions/1/download/")
    body = b"".join(response.streaming_content)
    assert response.status_code == 200 and body == model_files["torchscript"].read_bytes()
    path = Path(artifact_storage().path(version.artifact))
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    response = api(owner).get(f"{MODELS}iris/versions/1/download/")
    assert response.status_code == 409
    assert "does not match its sha256" in response.json()["error"] and "refused" in response.json()["error"]
    path.unlink()
    response = api(owner).get(f"{MODELS}iris/versions/1/download/")
    assert response.status_code == 409 and "missing" in response.json()["error"]


def test_bytes_changed_while_sending_break_the_download() -> None:
    content = bytes(range(256)) * 4096  # 1 MiB: more than one read's buffer
    name = artifact_storage().save("models/0/test/blob.bin", io.BytesIO(content))
    opened = artifact_open_verified(name, hashlib.sha256(content).hexdigest())
    assert opened.read(1024) == content[:1024]
    with Path(artifact_storage().path(name)).open("r+b") as handle:
        handle.seek(len(content) // 2)
        handle.write(b"tampered")
    chunks = iter(lambda: opened.read(64 * 1024), b"")
    with pytest.raises(ArtifactIntegrityError, match="changed while it was being sent"):
        list(chunks)
    opened.close()


# --- aliases guard the version that holds them -----------------------------------------------------


def test_archive_and_delete_of_the_production_version_are_409_unless_forced(api, owner, registered_model,
                                                                            ready_version) -> None:  # fmt: skip
    version = ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=version.version)
    services.alias_set(actor=owner, model=registered_model, name="staging", version_number=version.version)
    client = api(owner)
    for response in (client.post(f"{MODELS}iris/versions/1/archive/"), client.delete(f"{MODELS}iris/versions/1/")):
        assert response.status_code == 409, response.content
        assert "'production' and 'staging'" in response.json()["error"] and "force=true" in response.json()["error"]
    assert ModelAlias.objects.count() == 2
    forced = client.post(f"{MODELS}iris/versions/1/archive/", {"force": True}, format="json")
    assert forced.status_code == 200 and forced.json()["status"] == "archived"
    assert not ModelAlias.objects.exists()
    assert AuditEvent.objects.filter(action="alias.delete", after__forced=True).count() == 2


def test_delete_with_force_query_removes_version_and_aliases(api, owner, registered_model, ready_version) -> None:
    version = ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=version.version)
    assert api(owner).delete(f"{MODELS}iris/versions/1/?force=true").status_code == 204
    assert not ModelVersion.objects.exists()
    assert AuditEvent.objects.get(action="version.delete").after == {"forced": True}


def test_browser_archive_asks_for_the_force_box(client, owner, registered_model, ready_version) -> None:
    version = ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=version.version)
    client.force_login(owner)
    page = client.get("/models/iris/versions/1/").content.decode()
    assert 'name="force"' in page and "takes it offline" in page
    response = client.post("/models/iris/versions/1/archive/", follow=True)
    assert "holds the alias &#x27;production&#x27;" in response.content.decode()
    version.refresh_from_db()
    assert version.status == "ready"
    client.post("/models/iris/versions/1/archive/", {"force": "1"})
    version.refresh_from_db()
    assert version.status == "archived" and not ModelAlias.objects.exists()


def test_versions_without_aliases_archive_and_delete_without_force(owner, ready_version) -> None:
    version = ready_version()
    assert services.version_archive(actor=owner, version=version).status == "archived"
    services.version_delete(actor=owner, version=version)
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize("name", ["latest", "v3", "v10", "3", "42", "version-2", "v1_2", "current", "head", "none"])
def test_alias_names_that_read_like_versions_or_keywords_are_refused(owner, registered_model, ready_version,
                                                                     name) -> None:  # fmt: skip
    ready_version()
    with pytest.raises(InvalidInput, match=f"Invalid alias name '{name}'"):
        services.alias_set(actor=owner, model=registered_model, name=name, version_number=1)


def test_alias_names_that_only_contain_digits_or_v_are_fine(api, owner, registered_model, ready_version) -> None:
    ready_version()
    for name in ("production", "canary-v2", "vip", "latest-stable", "eu-3"):
        assert services.alias_set(actor=owner, model=registered_model, name=name, version_number=1).name == name
    response = api(owner).put(f"{MODELS}iris/aliases/latest/", {"version": 1}, format="json")
    assert response.status_code == 400 and "reserved word" in response.json()["error"]
    digits = api(owner).put(f"{MODELS}iris/aliases/3/", {"version": 1}, format="json")
    assert digits.status_code == 400 and "Invalid alias name '3'" in digits.json()["error"], digits.json()


# --- Idempotency-Key ------------------------------------------------------------------------------


def test_retried_upload_with_the_same_key_returns_the_first_version(api, owner, member, registered_model,
                                                                    model_files) -> None:  # fmt: skip
    client, key = api(owner), str(uuid.uuid4())
    first = client.post(f"{MODELS}iris/versions/", multipart(model_files["torchscript"], signature=SIGNATURE),
                        HTTP_IDEMPOTENCY_KEY=key)  # fmt: skip
    again = client.post(f"{MODELS}iris/versions/", multipart(model_files["torchscript"], signature=SIGNATURE),
                        HTTP_IDEMPOTENCY_KEY=key)  # fmt: skip
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() and again["Idempotency-Replayed"] == "true"
    assert ModelVersion.objects.count() == 1
    other = client.post(f"{MODELS}iris/versions/", multipart(model_files["exported_program"], signature=SIGNATURE),
                        HTTP_IDEMPOTENCY_KEY=key)  # fmt: skip
    assert other.status_code == 422 and "different request" in other.json()["error"]
    assert ModelVersion.objects.count() == 1


def test_model_creation_is_idempotent_per_caller_and_keys_expire(api, owner, member, settings) -> None:
    key = "create-iris-1"
    first = api(owner).post(MODELS, {"name": "iris"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
    again = api(owner).post(MODELS, {"name": "iris"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert RegisteredModel.objects.count() == 1
    # Another caller's key of the same name is theirs: their request runs (and meets the name taken).
    assert api(member).post(MODELS, {"name": "iris"}, format="json", HTTP_IDEMPOTENCY_KEY=key).status_code == 409
    assert api(owner).post(MODELS, {"name": "rose"}, format="json", HTTP_IDEMPOTENCY_KEY=key).status_code == 422
    IdempotencyKey.objects.update(created_at=IdempotencyKey.objects.get().created_at.replace(year=2000))
    assert api(owner).post(MODELS, {"name": "rose"}, format="json", HTTP_IDEMPOTENCY_KEY=key).status_code == 201


def test_a_refused_request_forgets_its_key(api, owner, registered_model, model_files) -> None:
    client = api(owner)
    bad = client.post(f"{MODELS}iris/versions/", multipart(model_files["text"], signature=SIGNATURE),
                      HTTP_IDEMPOTENCY_KEY="k1")  # fmt: skip
    assert bad.status_code == 400 and not IdempotencyKey.objects.exists()
    assert client.post(MODELS, {"name": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="bad key\t").status_code == 400


def test_a_key_still_in_progress_is_409_until_abandoned(api, owner) -> None:
    fingerprint = request_fingerprint("POST", MODELS, {"name": "rose"})
    busy = IdempotencyKey.objects.create(user=owner, key="busy", scope=f"POST {MODELS}", fingerprint=fingerprint)
    response = api(owner).post(MODELS, {"name": "rose"}, format="json", HTTP_IDEMPOTENCY_KEY="busy")
    assert response.status_code == 409 and "still being processed" in response.json()["error"]
    # Its process died before committing (it created nothing): after a while a retry runs.
    IdempotencyKey.objects.filter(pk=busy.pk).update(created_at=busy.created_at - ABANDONED_AFTER)
    assert api(owner).post(MODELS, {"name": "rose"}, format="json", HTTP_IDEMPOTENCY_KEY="busy").status_code == 201
    assert IdempotencyKey.objects.get().status_code == 201


def test_forced_archive_is_refused_to_a_maintainer_without_promote_rights_on_a_protected_alias(
    api, owner, member, registered_model, ready_version
) -> None:
    version = ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=version.version)
    services.role_grant(actor=owner, model=registered_model, role="maintainer", username=member.username)
    response = api(member).post(f"{MODELS}iris/versions/1/archive/?force=true")
    assert response.status_code == 403
    with pytest.raises(Conflict):
        services.version_archive(actor=owner, version=version)


def test_deleting_a_model_that_serves_under_an_alias_is_refused_unless_forced(
    api, client, owner, registered_model, ready_version
) -> None:
    version = ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=version.version)
    refused = api(owner).delete(f"{MODELS}iris/")
    assert refused.status_code == 409, refused.content
    assert "'production' (v1)" in refused.json()["error"] and "force=true" in refused.json()["error"]
    assert RegisteredModel.objects.filter(name="iris").exists() and ModelAlias.objects.count() == 1
    # The browser's delete offers the box, and without it says why nothing happened.
    client.force_login(owner)
    assert 'name="force"' in client.get("/models/iris/").content.decode()
    page = client.post("/models/iris/delete/", follow=True).content.decode()
    assert "serves under" in page and RegisteredModel.objects.filter(name="iris").exists()
    assert client.post("/models/iris/delete/", {"force": "1"}).status_code == 302
    assert not RegisteredModel.objects.exists()
    deleted = AuditEvent.objects.get(action="model.delete")
    assert deleted.before["aliases"] == {"production": 1} and deleted.after == {"forced": True}
