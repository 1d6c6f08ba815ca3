"""ONNX uploads: a .onnx file or an archive with its external data; signature from the graph; bad files refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from core.errors import InvalidInput
from inference import validation
from registry.artifacts import artifact_onnx_path, artifact_storage
from registry.models import ModelVersion, VersionStatus
from tests.conftest import multipart, upload_file
from tests.onnx_graphs import IRIS_INPUT, IRIS_OUTPUT, external_model, relu_model, tar_of, zip_of

pytestmark = pytest.mark.django_db

MODELS = "/api/v1/models/"
IRIS_SIGNATURE = {
    "inputs": [{"name": IRIS_INPUT, "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": IRIS_OUTPUT, "datatype": "FP32", "shape": [-1, 3]}],
}


def stored_files(settings) -> list[Path]:
    root = Path(settings.STORAGES["artifacts"]["OPTIONS"]["location"])
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def upload(owner, model, path: Path, **fields):
    fields.setdefault("signature", None)
    return upload_file(owner, model, path, enqueue=False, **fields)


def test_an_onnx_file_is_detected_and_its_signature_read_from_the_graph(owner, registered_model, onnx_files):
    version = upload(owner, registered_model, onnx_files["onnx"])
    assert version.format == "onnx" and version.signature_source == "graph"
    assert version.signature == IRIS_SIGNATURE
    assert version.artifact.endswith("iris.onnx")
    assert artifact_storage().open(version.artifact).read() == onnx_files["onnx"].read_bytes()


@pytest.mark.parametrize("key", ["onnx_zip", "onnx_tar"])
def test_an_archive_with_external_data_is_an_onnx_version(owner, registered_model, onnx_files, key, settings):
    # A .tar.gz is read as a Hugging Face model unless declared: format=onnx says what it is.
    version = upload(owner, registered_model, onnx_files[key], format="onnx")
    assert version.format == "onnx" and version.signature == IRIS_SIGNATURE
    assert version.artifact.endswith(".zip" if key == "onnx_zip" else ".tar.gz")
    # A worker unpacks it (checked again) into a folder holding the graph and its data.
    unpacked = artifact_onnx_path(Path(artifact_storage().path(version.artifact)), version.sha256)
    assert sorted(path.name for path in unpacked.iterdir()) == ["iris.onnx", "iris.onnx.data"]


def test_a_zip_with_an_onnx_file_needs_no_declared_format(owner, registered_model, onnx_files):
    assert upload(owner, registered_model, onnx_files["onnx_zip"]).format == "onnx"


def test_a_declared_signature_may_fix_open_dimensions_but_not_contradict_the_graph(owner, registered_model, onnx_files):
    fixed = {"inputs": [{"name": IRIS_INPUT, "datatype": "FP32", "shape": [2, 4]}]}
    version = upload(owner, registered_model, onnx_files["onnx"], signature=fixed)
    assert version.signature["inputs"] == fixed["inputs"]
    assert version.signature["outputs"] == IRIS_SIGNATURE["outputs"]
    for signature, fragment in [
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}, "differ from the ONNX graph's"),
        ({"inputs": [{"name": IRIS_INPUT, "datatype": "FP64", "shape": [-1, 4]}]}, "the ONNX graph says FP32"),
        ({"inputs": [{"name": IRIS_INPUT, "datatype": "FP32", "shape": [-1, 5]}]}, "the ONNX graph says [-1, 4]"),
    ]:
        with pytest.raises(InvalidInput, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            upload(owner, registered_model, onnx_files["onnx"], signature=signature)
    assert ModelVersion.objects.count() == 1


def test_graph_metadata_becomes_the_default_description(owner, registered_model, tmp_path):
    model = relu_model()
    model.doc_string = "Clips negatives."
    onnx.helper.set_model_props(model, {"author": "team-search"})
    path = tmp_path / "relu.onnx"
    onnx.save(model, path)
    version = upload(owner, registered_model, path)
    assert version.description == "Clips negatives."
    assert version.signature["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]


def _bad_files(tmp_path: Path, model_files: dict[str, Path], onnx_files: dict[str, Path]) -> dict[str, Path]:
    graph = onnx_files["onnx"].read_bytes()
    outside = external_model("../weights.bin").SerializeToString()
    absolute = external_model("/etc/passwd").SerializeToString()
    missing = external_model("weights.bin").SerializeToString()
    random = tmp_path / "random.onnx"
    random.write_bytes(np.random.default_rng(0).bytes(4096))
    single_external = tmp_path / "external.onnx"
    single_external.write_bytes(missing)
    return {
        "random": random,
        "torchscript": model_files["torchscript"],
        "no_graph": zip_of(tmp_path / "none.zip", {"model/readme.txt": b"no model here"}),
        "two_graphs": zip_of(tmp_path / "two.zip", {"a.onnx": graph, "b.onnx": graph}),
        "outside": zip_of(tmp_path / "outside.zip", {"m/model.onnx": outside, "weights.bin": bytes(12)}),
        "absolute": tar_of(tmp_path / "absolute.tar.gz", {"model.onnx": absolute}),
        "missing": zip_of(tmp_path / "missing.zip", {"model.onnx": missing}),
        "single_external": single_external,
    }


BAD = [
    ("random", "not an ONNX model"),
    ("torchscript", "declared as onnx but it is a torchscript archive"),
    ("no_graph", "holds no .onnx file"),
    ("two_graphs", "holds 2 .onnx files"),
    ("outside", "a path outside the archive"),
    ("absolute", "a path outside the archive"),
    ("missing", "which the archive does not hold"),
    ("single_external", "external data files (weights.bin) that were not uploaded with it"),
]


@pytest.mark.parametrize(("key", "fragment"), BAD)
def test_bad_onnx_uploads_get_400_and_leave_nothing(
    api, owner, registered_model, model_files, onnx_files, tmp_path, settings, key, fragment
):
    path = _bad_files(tmp_path, model_files, onnx_files)[key]
    response = api(owner).post(f"{MODELS}iris/versions/", multipart(path, format="onnx"), format="multipart")
    assert response.status_code == 400, response.content
    assert fragment in response.json()["error"], response.json()
    assert not ModelVersion.objects.exists()
    assert stored_files(settings) == []


def test_random_bytes_without_a_declared_format_are_named_neither_pytorch_nor_onnx(
    owner, registered_model, tmp_path, settings
):
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(2048))
    with pytest.raises(InvalidInput, match=r"not a PyTorch model archive .* nor an ONNX model"):
        upload(owner, registered_model, path)
    assert stored_files(settings) == []


def test_unsupported_tensor_types_are_refused_at_upload(owner, registered_model, tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.BFLOAT16, ["batch", 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.BFLOAT16, ["batch", 3])
    model = onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    path = tmp_path / "bf16.onnx"
    onnx.save(model, path)
    with pytest.raises(InvalidInput, match="input 'x' is a BFLOAT16 tensor"):
        upload(owner, registered_model, path)


def test_an_opset_newer_than_onnxruntime_supports_fails_validation_naming_it(owner, registered_model, tmp_path):
    path = tmp_path / "future.onnx"
    onnx.save(relu_model(opset=30), path)
    version = upload(owner, registered_model, path)
    assert validation.version_validate(version.pk) == VersionStatus.FAILED
    version.refresh_from_db()
    assert "imports opset 30 of the ai.onnx domain, newer than onnxruntime" in version.status_reason
    assert "supports (it supports up to opset" in version.status_reason


def test_validation_records_the_provider_and_the_graph(owner, registered_model, onnx_files):
    version = upload(owner, registered_model, onnx_files["onnx_zip"])
    assert validation.version_validate(version.pk) == VersionStatus.READY, version.status_reason
    version.refresh_from_db()
    figures = version.validation
    assert figures["provider"] == "CPUExecutionProvider" and figures["runtime"] == "onnxruntime"
    assert figures["parameter_count"] == 4 * 8 + 8 + 8 * 3 + 3
    assert figures["memory_bytes"] == 4 * figures["parameter_count"]
    assert figures["latency_ms"]["p50"] > 0 and figures["batching"] is True
    assert figures["onnx"]["producer"].startswith("pytorch") and figures["onnx"]["opset"] >= 18
    assert version.signature == IRIS_SIGNATURE


def test_version_page_shows_the_provider(client, owner, registered_model, onnx_files):
    version = upload(owner, registered_model, onnx_files["onnx"])
    validation.version_validate(version.pk)
    client.force_login(owner)
    page = client.get(f"/models/iris/versions/{version.version}/").content.decode()
    assert "CPUExecutionProvider" in page and "onnxruntime" in page


def test_upload_model_command_takes_an_onnx_file(owner, registered_model, onnx_files, capsys):
    call_command("upload_model", "iris", str(onnx_files["onnx"]), "--user", owner.username)
    assert ModelVersion.objects.get().format == "onnx"
    with pytest.raises(CommandError, match="not an ONNX model"):
        call_command("upload_model", "iris", __file__, "--user", owner.username, "--format", "onnx")


def test_the_upload_form_takes_an_onnx_file_without_a_signature(client, owner, registered_model, onnx_files):
    client.force_login(owner)
    with onnx_files["onnx"].open("rb") as stream:
        response = client.post("/models/iris/upload/", {"file": stream, "signature": "", "format": ""})
    assert response.status_code == 302 and response["Location"] == "/models/iris/versions/1/"
    assert ModelVersion.objects.get().signature == IRIS_SIGNATURE
