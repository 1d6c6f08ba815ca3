"""Model artifacts: recognising formats, storing, verifying and fetching them.

Artifacts go through Django's storage API (the "artifacts" storage), so a local
directory and an S3-compatible bucket behave the same. Workers fetch an artifact into a
local cache keyed by sha256 and refuse bytes that no longer match the recorded hash.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.utils.text import get_valid_filename

from core.errors import InsufficientStorage, InvalidInput, ServiceUnavailable
from registry.archives import (
    TAR_GZ,
    ZIP,
    ArchiveLimits,
    ArchiveListing,
    archive_kind,
    archive_unpack,
    zip_layout,
    zip_limits_check,
)
from registry.huggingface import HuggingFaceArchive, hf_files_check, hf_inspect, hf_wanted
from registry.models import ModelFormat
from registry.onnx_models import (
    NOT_ONNX,
    OnnxUpload,
    onnx_archive_inspect,
    onnx_file_inspect,
    onnx_listing_check,
    onnx_wanted,
)

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
HINT = (
    "Save a TorchScript module with torch.jit.save(...) or an exported program with torch.export.save(...); "
    "an ONNX model is its .onnx file (with its external data: all in one .zip or .tar.gz, format=onnx); "
    "a Hugging Face model is its save_pretrained directory as one .zip or .tar.gz."
)
ZIP_AFTER_DATA = (
    "The file holds a zip archive after other data (a tar, a script or anything else before it); "
    "an archive must be a zip from its first byte, so it was refused."
)
EXTENSIONS: dict[str, str] = {
    ModelFormat.TORCHSCRIPT: ".pt",
    ModelFormat.EXPORTED_PROGRAM: ".pt2",
    ModelFormat.HUGGINGFACE: ".zip",
    ModelFormat.ONNX: ".onnx",
}


class ArtifactIntegrityError(Exception):
    """The stored bytes differ from the sha256 recorded at upload."""


def artifact_storage() -> Storage:
    return storages["artifacts"]


def sha256_of(stream: IO[bytes]) -> str:
    """Hex sha256 of a binary stream, read in chunks from its current position."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _unsafe_member(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":")


@dataclass(frozen=True)
class ArchiveCheck:
    """What an uploaded file is: its format and, for a Hugging Face model, what its archive holds
    (None only when the file was declared as another format, which the caller refuses), and for an
    ONNX model its graph (the same)."""

    format: str
    huggingface: HuggingFaceArchive | None = None
    onnx: OnnxUpload | None = None


def _looks_huggingface(names: list[str]) -> bool:
    return any(PurePosixPath(name).name == "config.json" or name.endswith(".safetensors") for name in names)


def _huggingface_check(stream: IO[bytes], format: str | None, task: str | None) -> ArchiveCheck:
    # Declared as another format: the caller says so at once, without scanning the archive.
    if format and format != ModelFormat.HUGGINGFACE:
        return ArchiveCheck(ModelFormat.HUGGINGFACE)
    return ArchiveCheck(ModelFormat.HUGGINGFACE, hf_inspect(stream, task))


def archive_check(stream: IO[bytes], *, format: str | None = None, task: str | None = None) -> ArchiveCheck:
    """The format of a model archive, or InvalidInput saying what the file is instead.

    A TorchScript or torch.export archive is told by its zip directory alone; loading it
    is the worker's job. A Hugging Face archive (a .tar.gz; a zip declared
    `format="huggingface"`, holding config.json or safetensors, or given a `task`) is
    scanned whole and checked by registry.huggingface, with `task` declared or inferred.
    """
    stream.seek(0)
    if not stream.read(4):
        raise InvalidInput("The uploaded file is empty.", field="file")
    stream.seek(0)
    kind = archive_kind(stream)
    if kind == TAR_GZ and format == ModelFormat.ONNX:
        return ArchiveCheck(ModelFormat.ONNX, onnx=onnx_archive_inspect(stream))
    if kind == TAR_GZ:
        return _huggingface_check(stream, format, task)
    if kind is None and format in (ModelFormat.ONNX, None):
        return _onnx_file_check(stream, format)
    if kind != ZIP and format == ModelFormat.HUGGINGFACE:
        raise InvalidInput(
            "The file is neither a .zip nor a .tar.gz archive; a Hugging Face model is its save_pretrained "
            "directory packed as one of them.",
            field="file",
        )
    if kind != ZIP:
        if zipfile.is_zipfile(stream):
            raise InvalidInput(ZIP_AFTER_DATA, field="file")
        raise InvalidInput(
            "The file is not a PyTorch model archive (not a readable zip file; it may be corrupt or truncated). "
            + HINT,
            field="file",
        )
    # The layout (from the first byte, nothing prepended, no overlaps) and the entry count,
    # read from the directory alone, before the names say which format it is.
    torch_limits, hf_limits = ArchiveLimits.torch(), ArchiveLimits.huggingface()
    zip_layout(stream, max(torch_limits, hf_limits, key=lambda limits: limits.max_entries))
    try:
        archive = zipfile.ZipFile(stream)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise InvalidInput(
            "The file is not a PyTorch model archive (not a readable zip file; it may be corrupt or truncated). "
            + HINT,
            field="file",
        ) from None
    finally:
        stream.seek(0)
    unsafe = next((name for name in names if _unsafe_member(name)), None)
    if unsafe is not None:
        raise InvalidInput(
            f"The archive contains an unsafe path {unsafe!r} ('..' or absolute); it was refused.", field="file"
        )
    roots = {name.split("/", 1)[0] for name in names}
    members = {name.split("/", 1)[1] for name in names if "/" in name}
    if len(roots) == 1 and "data.pkl" in members and any(name.startswith("code/") for name in members):
        zip_limits_check(stream, torch_limits)
        return ArchiveCheck(ModelFormat.TORCHSCRIPT)
    if len(roots) == 1 and (
        "archive_format" in members or any(name.startswith("models/") and name.endswith(".json") for name in members)
    ):
        zip_limits_check(stream, torch_limits)
        return ArchiveCheck(ModelFormat.EXPORTED_PROGRAM)
    if format == ModelFormat.ONNX:
        return ArchiveCheck(ModelFormat.ONNX, onnx=onnx_archive_inspect(stream))
    if format == ModelFormat.HUGGINGFACE or _looks_huggingface(names) or (task and task.strip()):
        return _huggingface_check(stream, format, task)
    if any(name.lower().endswith(".onnx") for name in names):
        return ArchiveCheck(ModelFormat.ONNX, onnx=onnx_archive_inspect(stream) if not format else None)
    if len(roots) != 1:
        raise InvalidInput(
            f"The archive has {len(roots)} top-level folders; a PyTorch archive has one. {HINT}", field="file"
        )
    if "data.pkl" in members:
        raise InvalidInput(
            f"The file is a torch.save checkpoint (weights only), which cannot be served without its code. {HINT}",
            field="file",
        )
    raise InvalidInput(f"The zip file is not a TorchScript or torch.export archive. {HINT}", field="file")


def _onnx_file_check(stream: IO[bytes], format: str | None) -> ArchiveCheck:
    """A file that is no archive: an ONNX model when declared so or when it reads as one."""
    if format == ModelFormat.ONNX:
        return ArchiveCheck(ModelFormat.ONNX, onnx=onnx_file_inspect(stream))
    try:
        return ArchiveCheck(ModelFormat.ONNX, onnx=onnx_file_inspect(stream))
    except InvalidInput as exc:
        if not exc.message.startswith(NOT_ONNX):
            raise  # it is ONNX, with a problem of its own
    if zipfile.is_zipfile(stream):
        raise InvalidInput(ZIP_AFTER_DATA, field="file")
    raise InvalidInput(
        "The file is not a PyTorch model archive (not a readable zip file; it may be corrupt or truncated) "
        "nor an ONNX model. " + HINT,
        field="file",
    )


def artifact_zip_check(path: Path, format: str) -> Path:
    """Check a fetched TorchScript or torch.export file (a zip that torch.jit.load reads) against the
    upload's layout and limits again, from its directory alone, before a worker loads it: a version
    stored before the checks existed, or under looser limits, is not loaded past them."""
    if format in (ModelFormat.TORCHSCRIPT, ModelFormat.EXPORTED_PROGRAM):
        with path.open("rb") as stream:
            zip_limits_check(stream, ArchiveLimits.torch())
    return path


def artifact_stem(filename: str) -> str:
    """A file name without its folder and its extension (.tar.gz counts as one)."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    if name.lower().endswith(".tar.gz"):
        return name[: -len(".tar.gz")]
    return os.path.splitext(name)[0]


def artifact_filename(filename: str, model_name: str, checked: ArchiveCheck) -> str:
    """The name an artifact is stored under: a Hugging Face archive's ends in its kind (.zip or .tar.gz),
    whatever the upload was called, so that the download is named by what it holds."""
    if checked.onnx is not None:
        stem = artifact_stem(filename) or model_name
        kind = checked.onnx.archive_kind
        return stem + (".onnx" if kind is None else ".tar.gz" if kind == TAR_GZ else ".zip")
    if checked.huggingface is None:
        return filename or "model"
    stem = artifact_stem(filename) or model_name
    return stem + (".tar.gz" if checked.huggingface.kind == TAR_GZ else ".zip")


def artifact_extension(format: str, artifact: str) -> str:
    """The file extension of a stored artifact (.pt, .pt2, .onnx, .zip or .tar.gz)."""
    if format == ModelFormat.ONNX and artifact.endswith((".zip", ".tar.gz")):
        return ".tar.gz" if artifact.endswith(".tar.gz") else ".zip"
    if format == ModelFormat.HUGGINGFACE:
        return ".tar.gz" if artifact.endswith(".tar.gz") else ".zip"
    return EXTENSIONS.get(format, ".pt")


# errno values that mean "no room" rather than "the store is broken".
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def storage_error(exc: BaseException, doing: str) -> InsufficientStorage | ServiceUnavailable:
    """The error a client gets when the store failed: 507 when it is full, 503 otherwise."""
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return InsufficientStorage(
            f"The artifact store is full ({exc.strerror}) while {doing}; nothing was kept. "
            "Retry once an operator has made room."
        )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return ServiceUnavailable(
        f"The artifact store is unavailable ({reason}) while {doing}; nothing was kept. Retry later."
    )


def artifact_store(model_id: int, filename: str, content: File) -> str:
    """Save an uploaded file to artifact storage under a fresh, unguessable path.

    A store that fails part way (disk full, a read-only or unreachable store) leaves no
    partial bytes behind: they are removed and InsufficientStorage (507, full) or
    ServiceUnavailable (503) names the problem.
    """
    safe = get_valid_filename(os.path.basename(filename or "model")) or "model"
    name = f"models/{model_id}/{uuid.uuid4().hex}/{safe}"
    content.seek(0)
    try:
        return artifact_storage().save(name, content)
    except Exception as exc:
        logger.warning("storing %s failed: %s", name, exc)
        with contextlib.suppress(Exception):
            artifact_delete(name)
        raise storage_error(exc, "storing the upload") from exc


def artifact_delete(path: str) -> None:
    """Remove an artifact; a file already gone is not an error."""
    storage = artifact_storage()
    try:
        storage.delete(path)
    except FileNotFoundError:
        return
    # Remove the per-upload folder the file lived in, when the storage has folders.
    if hasattr(storage, "path"):
        with contextlib.suppress(OSError, NotImplementedError):
            os.rmdir(Path(storage.path(path)).parent)


def _cache_dir() -> Path:
    path = settings.DATA_DIR / "artifact-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifact_fetch(path: str, sha256: str) -> Path:
    """A local file holding the artifact, verified against `sha256`.

    Local storage is read in place and verified each time; remote storage is downloaded
    once into a cache named by the hash (written to a temporary name, then renamed).
    """
    storage = artifact_storage()
    try:
        local = Path(storage.path(path))
    except NotImplementedError:
        local = None
    if local is not None:
        if not local.exists():
            raise ArtifactIntegrityError(f"the artifact {path} is missing from storage")
        with local.open("rb") as stream:
            actual = sha256_of(stream)
        if actual != sha256:
            raise ArtifactIntegrityError(
                f"the stored artifact does not match its sha256 (expected {sha256[:12]}…, found {actual[:12]}…); "
                "it was modified or corrupted after upload"
            )
        return local
    cached = _cache_dir() / sha256
    if cached.exists():
        return cached
    digest = hashlib.sha256()
    with storage.open(path, "rb") as source, tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as target:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            digest.update(chunk)
            target.write(chunk)
    if digest.hexdigest() != sha256:
        os.unlink(target.name)
        raise ArtifactIntegrityError(
            f"the stored artifact does not match its sha256 (expected {sha256[:12]}…, found {digest.hexdigest()[:12]}…)"
        )
    os.replace(target.name, cached)
    return cached


class VerifiedArtifact:
    """An open artifact whose bytes matched their sha256 before the first one is sent.

    It is hashed again as it is read, so bytes changed while a download is under way end
    the response with an error (the client sees a broken transfer, never a completed one).
    """

    def __init__(self, handle: IO[bytes], sha256: str, name: str) -> None:
        self.handle, self.sha256, self.name = handle, sha256, name
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        if chunk:
            self.digest.update(chunk)
        elif self.digest.hexdigest() != self.sha256:
            raise ArtifactIntegrityError(f"the artifact {self.name} changed while it was being sent")
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        # FileResponse measures the length (to the end and back); a read from anywhere else
        # than the start would not hash the whole file.
        position = self.handle.seek(offset, whence)
        if whence == 0 and offset == 0:
            self.digest = hashlib.sha256()
        return position

    def tell(self) -> int:
        return self.handle.tell()

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self.handle.close()


def artifact_open_verified(path: str, sha256: str) -> VerifiedArtifact:
    """The artifact opened for a download, its whole content checked against `sha256` first.

    Local storage is hashed through the very handle that is then sent (no window between
    the check and the read); remote storage goes through artifact_fetch's verified cache.
    Raises ArtifactIntegrityError (missing or altered bytes), or the 503 of storage_error.
    """
    storage = artifact_storage()
    try:
        try:
            local = Path(storage.path(path))
        except NotImplementedError:
            local = artifact_fetch(path, sha256)
        handle = local.open("rb")
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"the artifact {path} is missing from storage") from None
    except ArtifactIntegrityError:
        raise
    except Exception as exc:
        raise storage_error(exc, "reading the artifact") from exc
    actual = sha256_of(handle)
    if actual != sha256:
        handle.close()
        raise ArtifactIntegrityError(
            f"the stored artifact does not match its sha256 (expected {sha256[:12]}…, found {actual[:12]}…); "
            "it was modified or corrupted after upload"
        )
    handle.seek(0)
    return VerifiedArtifact(handle, sha256, path)


# A temporary unpacking folder older than this was left by a crashed worker.
STALE_UNPACK_SECONDS = 3600


def _unpacked_dir() -> Path:
    path = settings.DATA_DIR / "hf-unpacked"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stale_unpacks_remove(parent: Path, sha256: str) -> None:
    cutoff = time.time() - STALE_UNPACK_SECONDS
    for leftover in parent.glob(f".{sha256}.*.tmp"):
        with contextlib.suppress(OSError):
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)


def artifact_unpacked_cached(sha256: str) -> Path | None:
    """The unpacked model of the archive with this hash, when a previous artifact_unpacked left it here."""
    final = settings.DATA_DIR / "hf-unpacked" / sha256
    return final if final.is_dir() else None


def artifact_unpacked(
    path: Path,
    sha256: str,
    wanted: Callable[[str], int] = hf_wanted,
    check: Callable[[ArchiveListing], object] = hf_files_check,
) -> Path:
    """A directory holding the unpacked model of the archive at `path` (Hugging Face by default;
    an ONNX model's with onnx_wanted and onnx_listing_check).

    `path` is a verified local copy (artifact_fetch) and `sha256` its hash, which names the
    cache folder `DATA_DIR/hf-unpacked/<sha256>`; a folder already there is reused. The
    archive is unpacked into a temporary sibling with the upload's checks (traversal,
    links, entry count, sizes counted as they are decompressed, safetensors only, no
    remote code, tokenizer present) and renamed into place only when complete, so
    concurrent workers and a crash never leave a half-unpacked model behind.
    Raises InvalidInput when the stored archive fails a check.
    """
    cached = artifact_unpacked_cached(sha256)
    if cached is not None:
        return cached
    parent = _unpacked_dir()
    final = parent / sha256
    _stale_unpacks_remove(parent, sha256)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha256}.", suffix=".tmp", dir=parent))
    try:
        with path.open("rb") as stream:
            listing, model_dir = archive_unpack(stream, staging / "files", wanted)
        check(listing)
        try:
            os.rename(model_dir, final)
        except OSError:
            # Another worker finished first (rename onto a non-empty folder fails): use its copy.
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("unpacked %s (%d files, %d bytes) into %s", path.name, len(listing.files), listing.total_bytes, final)
    return final


def artifact_onnx_path(path: Path, sha256: str) -> Path:
    """What ONNX Runtime loads for a fetched ONNX artifact: the .onnx file itself, or the folder an
    archive (the model and its external data) unpacks to, with the upload's checks run again."""
    with path.open("rb") as stream:
        kind = archive_kind(stream)
    if kind is None:
        return path
    return artifact_unpacked(path, sha256, wanted=onnx_wanted, check=onnx_listing_check)
