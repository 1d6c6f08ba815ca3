"""Registry services: uploads, validation, aliases, archive and delete."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from django.core.files.base import ContentFile

from core.errors import Conflict, InvalidInput, PayloadTooLarge
from inference import validation
from registry import services
from registry.artifacts import artifact_storage
from registry.models import AuditEvent, ModelAlias, ModelVersion, VersionStatus
from tests.conftest import SIGNATURE, upload_file

pytestmark = pytest.mark.django_db


def stored_files(settings) -> list[Path]:
    root = Path(settings.STORAGES["artifacts"]["OPTIONS"]["location"])
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_records_hash_size_format_and_numbers_versions(owner, registered_model, model_files):
    first = upload_file(owner, registered_model, model_files["torchscript"], description="first", tags="a, b")
    second = upload_file(owner, registered_model, model_files["exported_program"])
    data = model_files["torchscript"].read_bytes()
    assert (first.version, second.version) == (1, 2)
    assert first.sha256 == hashlib.sha256(data).hexdigest()
    assert first.size_bytes == len(data)
    assert (first.format, second.format) == ("torchscript", "exported_program")
    assert first.status == VersionStatus.PENDING
    assert sorted(first.tags.values_list("name", flat=True)) == ["a", "b"]
    assert artifact_storage().open(first.artifact).read() == data
    assert AuditEvent.objects.filter(action="version.upload", model=registered_model).count() == 2


def test_validation_records_figures_and_output_signature(ready_version):
    version = ready_version(labels=["a", "b", "c"])
    assert version.status == VersionStatus.READY
    assert version.validation["parameter_count"] == 4 * 8 + 8 + 8 * 3 + 3
    assert version.validation["latency_ms"]["p50"] > 0
    assert version.validation["load_seconds"] > 0
    assert version.validation["batching"] is True
    assert version.signature["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}]


def test_exported_program_validates_too(ready_version):
    version = ready_version("exported_program")
    assert version.signature["outputs"][0]["shape"] == [-1, 3]


def test_signature_inferred_from_example_input(owner, registered_model, model_files):
    example = {"inputs": [{"name": "x", "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}]}
    version = upload_file(
        owner, registered_model, model_files["torchscript"], signature=None, example_input=example, enqueue=False
    )
    assert version.signature == {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": []}
    assert version.signature_source == "example"
    assert validation.version_validate(version.pk) == VersionStatus.READY


def test_validation_fails_with_reason_when_signature_does_not_fit_model(owner, registered_model, model_files):
    bad = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 7]}]}
    version = upload_file(owner, registered_model, model_files["torchscript"], signature=bad, enqueue=False)
    assert validation.version_validate(version.pk) == VersionStatus.FAILED
    version.refresh_from_db()
    assert "forward pass failed" in version.status_reason
    assert "mat1 and mat2" in version.status_reason or "shape" in version.status_reason


def test_validation_fails_when_labels_do_not_match_outputs(owner, registered_model, model_files):
    version = upload_file(owner, registered_model, model_files["torchscript"], labels=["a", "b"], enqueue=False)
    validation.version_validate(version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert "2 labels" in version.status_reason and "3 values" in version.status_reason


def test_tampered_artifact_is_refused_on_load(owner, registered_model, model_files):
    version = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    path = Path(artifact_storage().path(version.artifact))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    validation.version_validate(version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert "does not match its sha256" in version.status_reason


def test_worker_death_is_retried_then_failed_never_stuck(owner, registered_model, model_files):
    version = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    # Simulate deliveries that died mid-validation: the row is left "validating".
    ModelVersion.objects.filter(pk=version.pk).update(status=VersionStatus.VALIDATING, validation_attempts=3)
    assert validation.version_validate(version.pk) == VersionStatus.FAILED
    version.refresh_from_db()
    assert "interrupted 3 times" in version.status_reason


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("text", "not a readable zip"),
        ("truncated", "not a readable zip"),
        ("state_dict", "torch.save checkpoint"),
    ],
)
def test_non_model_files_are_refused_and_leave_nothing(owner, registered_model, model_files, settings, key, message):
    with pytest.raises(InvalidInput, match=message):
        upload_file(owner, registered_model, model_files[key])
    assert not ModelVersion.objects.exists()
    assert stored_files(settings) == []


def test_declared_format_must_match_file(owner, registered_model, model_files, settings):
    with pytest.raises(InvalidInput, match="declared as exported_program but it is a torchscript"):
        upload_file(owner, registered_model, model_files["torchscript"], format="exported_program")
    assert not ModelVersion.objects.exists() and stored_files(settings) == []


def test_archive_with_parent_paths_is_refused(owner, registered_model, tmp_path, settings):
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("m/data.pkl", b"x")
        archive.writestr("m/code/__torch__.py", b"x")
        archive.writestr("m/../../etc/cron.d/own", b"x")
    with pytest.raises(InvalidInput, match="unsafe path"):
        upload_file(owner, registered_model, evil)
    assert not ModelVersion.objects.exists() and stored_files(settings) == []


def test_empty_and_oversized_uploads_are_refused(owner, registered_model, model_files, settings):
    with pytest.raises(InvalidInput, match="empty"):
        services.version_upload(
            actor=owner, model=registered_model, file=ContentFile(b"", name="x.pt"), signature=SIGNATURE
        )
    settings.MODEL_UPLOAD_MAX_BYTES = 100
    with pytest.raises(PayloadTooLarge, match="larger than the limit"):
        upload_file(owner, registered_model, model_files["torchscript"])
    assert not ModelVersion.objects.exists() and stored_files(settings) == []


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (None, "Give a signature"),
        ({"inputs": []}, "at least one input"),
        ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [-1]}]}, "datatype 'FLOAT'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}, "shape must be"),
        ({"inputs": [{"name": "1x", "datatype": "FP32", "shape": [1]}]}, "not a valid tensor name"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}], "extra": 1}, "unknown key"),
    ],
)
def test_bad_signatures_are_refused(owner, registered_model, model_files, signature, message):
    with pytest.raises(InvalidInput, match=message):
        upload_file(owner, registered_model, model_files["torchscript"], signature=signature)
    assert not ModelVersion.objects.exists()


def test_example_must_match_declared_signature(owner, registered_model, model_files):
    example = {"inputs": [{"name": "features", "datatype": "FP32", "data": [[1, 2, 3]]}]}
    with pytest.raises(InvalidInput, match="shape"):
        upload_file(owner, registered_model, model_files["torchscript"], example_input=example)


def test_duplicate_model_name_conflicts(owner, member, registered_model):
    with pytest.raises(Conflict, match="already exists"):
        services.model_create(actor=member, name="iris")


@pytest.mark.parametrize("name", ["", "-lead", "has space", "a" * 65, "slash/name", "é"])
def test_invalid_model_names_are_refused(owner, name):
    with pytest.raises(InvalidInput, match="Invalid model name"):
        services.model_create(actor=owner, name=name)


def test_alias_moves_are_audited_and_roll_back(owner, registered_model, ready_version):
    v1, v2 = ready_version(), ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=v1.version)
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=v2.version)
    alias = ModelAlias.objects.get(model=registered_model, name="production")
    assert alias.version == v2
    moves = list(AuditEvent.objects.filter(object_type="alias").order_by("id").values_list("before", "after"))
    assert moves == [({"version": None}, {"version": 1}), ({"version": 1}, {"version": 2})]

    rolled = services.alias_rollback(actor=owner, model=registered_model, name="production")
    assert rolled.version == v1
    last = AuditEvent.objects.filter(object_type="alias").latest("id")
    assert (last.action, last.before, last.after) == ("alias.rollback", {"version": 2}, {"version": 1})


def test_rollback_without_history_conflicts(owner, registered_model, ready_version):
    version = ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=version.version)
    with pytest.raises(Conflict, match="no previous version"):
        services.alias_rollback(actor=owner, model=registered_model, name="production")


def test_alias_refuses_version_that_is_not_ready(owner, registered_model, model_files):
    pending = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    with pytest.raises(Conflict, match="only ready versions"):
        services.alias_set(actor=owner, model=registered_model, name="production", version_number=pending.version)
    assert not ModelAlias.objects.exists()


@pytest.mark.parametrize("name", ["Production", "1", "9lives", "a" * 33, "has space", ""])
def test_invalid_alias_names_are_refused(owner, registered_model, ready_version, name):
    version = ready_version()
    with pytest.raises(InvalidInput, match="Invalid alias name"):
        services.alias_set(actor=owner, model=registered_model, name=name, version_number=version.version)


def test_archive_drops_aliases_keeps_history_and_blocks_rollback_to_it(owner, registered_model, ready_version):
    v1, v2 = ready_version(), ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=v1.version)
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=v2.version)
    services.version_archive(actor=owner, version=v1)
    v1.refresh_from_db()
    assert v1.status == VersionStatus.ARCHIVED
    with pytest.raises(Conflict, match="version 1: that version is archived"):
        services.alias_rollback(actor=owner, model=registered_model, name="production")
    with pytest.raises(Conflict, match=r"holds the alias 'production'.*force=true"):
        services.version_archive(actor=owner, version=v2)
    assert ModelAlias.objects.get().version == v2
    services.version_archive(actor=owner, version=v2, force=True)
    assert not ModelAlias.objects.exists()
    dropped = AuditEvent.objects.get(action="alias.delete", object_repr="production")
    assert dropped.after == {"version": None, "reason": "archived", "forced": True}
    assert AuditEvent.objects.get(action="version.archive", object_repr="v2").after["forced"] is True


def test_delete_version_and_model_remove_artifacts(
    owner, registered_model, ready_version, settings, django_capture_on_commit_callbacks
):
    v1, _ = ready_version(), ready_version("exported_program")
    assert len(stored_files(settings)) == 2
    with django_capture_on_commit_callbacks(execute=True):
        services.version_delete(actor=owner, version=v1)
    assert len(stored_files(settings)) == 1
    with django_capture_on_commit_callbacks(execute=True):
        services.model_delete(actor=owner, model=registered_model)
    assert stored_files(settings) == []
    assert not ModelVersion.objects.exists()
    assert AuditEvent.objects.filter(action="model.delete", object_repr="iris").exists()


def test_deleted_version_numbers_are_not_reused(owner, registered_model, ready_version):
    first = ready_version()
    services.version_delete(actor=owner, version=first)
    assert ready_version().version == 2


def test_enqueue_failure_marks_version_failed_with_reason(
    owner, registered_model, model_files, monkeypatch, django_capture_on_commit_callbacks
):
    def broker_down(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to redis")

    monkeypatch.setattr(validation.version_validate_task, "delay", broker_down)
    version = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    services.version_validation_enqueue(version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED
    assert "could not be queued" in version.status_reason
    with django_capture_on_commit_callbacks(execute=True):
        services.version_revalidate(actor=owner, version=version)
    version.refresh_from_db()
    assert version.status == VersionStatus.FAILED  # the broker is still down
    assert AuditEvent.objects.filter(action="version.revalidate").exists()
