"""Safe reading of directory archives (.zip and .tar.gz): scanning them and unpacking them.

A Hugging Face model arrives as a directory packed into one archive. Nothing in it is
trusted: every entry name is checked for traversal, tar links and devices are refused,
the entry count and the total size are capped, and the bytes actually decompressed are
counted, because a zip's directory (or a gzip stream) may lie about what it expands to.
The same checks run when the archive is scanned at upload and when a worker unpacks it.

Names are reported relative to the model directory: when every entry sits under one
top-level folder (`my-model/config.json`), that folder is the `root` and is stripped.
"""

from __future__ import annotations

import gzip
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from django.conf import settings

from core.errors import InvalidInput

ZIP = "zip"
TAR_GZ = "tar.gz"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
GZIP_MAGIC = b"\x1f\x8b"
ZIP_ENCRYPTED = 0x1
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
CHUNK = 1024 * 1024
# The largest member whose bytes a scan keeps in memory (config.json, a shard index).
MAX_READ_BYTES = 16 * 1024 * 1024
# All that a scan keeps in memory: a tar's root folder is known only at its end, so a member
# is kept on the chance that it is wanted, and 2,000 large "x/config.json" must not add up.
MAX_KEPT_BYTES = 64 * 1024 * 1024
# A tar ends with zero blocks (10 kB by default); anything much longer after the last member is refused.
MAX_TRAILER_BYTES = 1024 * 1024
# What a scan keeps of a member, asked per relative name: 0 (nothing), WHOLE (the file, up to
# MAX_READ_BYTES, refused beyond) or a number of leading bytes (a weights file's header).
Wanted = Callable[[str], int]
WHOLE = -1
# A zip's first local file header, the only first bytes an uploaded zip may have.
ZIP_LOCAL_MAGIC = b"PK\x03\x04"
# Flag bit 3: sizes follow the data in a descriptor of 12 or 16 bytes (20 or 24 with zip64).
ZIP_DESCRIPTOR_FLAG = 0x8
ZIP_DESCRIPTOR_SIZES = (12, 16, 20, 24)
ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
# Fields of zipfile's end record (a list): signature, total entries, directory size and
# offset, the record's own position; and the sizes of the zip64 record and its locator.
ECD_SIGNATURE, ECD_ENTRIES, ECD_SIZE, ECD_OFFSET, ECD_LOCATION = 0, 4, 5, 6, 9
ZIP64_END_MAGIC = b"PK\x06\x06"
ZIP64_END_SIZES = 56 + 20
# zipfile reads the central directory into memory whole: 20,000 entries take ~2 MB.
MAX_ZIP_DIRECTORY_BYTES = 64 * 1024 * 1024
# Below this many declared bytes an archive's compression ratio is not judged: a few
# megabytes of zeros compress a thousandfold and harm no one.
RATIO_FLOOR_BYTES = 16 * 1024 * 1024
# What archivers add beside the content (macOS Finder); skipped, never unpacked.
IGNORED_ROOTS = ("__MACOSX",)
IGNORED_NAMES = (".DS_Store",)


@dataclass
class ArchiveListing:
    """What an archive holds: its kind, its files (relative path → size) and the files read."""

    kind: str
    root: str = ""
    files: dict[str, int] = field(default_factory=dict)
    total_bytes: int = 0
    contents: dict[str, bytes] = field(default_factory=dict)  # the wanted files (or their heads)


def archive_kind(stream: IO[bytes]) -> str | None:
    """The archive's kind ("zip", "tar.gz" or None) from the stream's first bytes (its name is not trusted)."""
    stream.seek(0)
    head = stream.read(4)
    stream.seek(0)
    if head in ZIP_MAGICS:
        return ZIP
    if head[:2] == GZIP_MAGIC:
        return TAR_GZ
    return None


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(message, field="file")


def _size_text(count: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


@dataclass(frozen=True)
class ArchiveLimits:
    """How many entries and declared bytes an archive of one kind may hold, and the settings that say so."""

    max_entries: int
    max_bytes: int
    entries_setting: str
    bytes_setting: str

    @classmethod
    def huggingface(cls) -> ArchiveLimits:
        return cls(settings.HF_ARCHIVE_MAX_ENTRIES, settings.HF_ARCHIVE_MAX_BYTES,
                   "HF_ARCHIVE_MAX_ENTRIES", "HF_ARCHIVE_MAX_BYTES")  # fmt: skip

    @classmethod
    def torch(cls) -> ArchiveLimits:
        return cls(settings.TORCH_ARCHIVE_MAX_ENTRIES, settings.TORCH_ARCHIVE_MAX_BYTES,
                   "TORCH_ARCHIVE_MAX_ENTRIES", "TORCH_ARCHIVE_MAX_BYTES")  # fmt: skip

    def entries_check(self, entries: int, at: str = "") -> None:
        if entries > self.max_entries:
            where = f" (at {at!r})" if at else ""
            raise _refuse(
                f"The archive has more than {self.max_entries} entries ({self.entries_setting}){where}; "
                "it was refused before anything was stored."
            )

    def bytes_check(self, declared: int, at: str = "") -> None:
        if declared > self.max_bytes:
            where = f" (at {at!r})" if at else ""
            raise _refuse(
                f"The archive declares more than {_size_text(self.max_bytes)} uncompressed "
                f"({self.bytes_setting}){where}; "
                "it was refused before anything was stored."
            )


def ratio_check(declared: int, size: int) -> None:
    """Refuse an archive that expands more than ARCHIVE_MAX_RATIO times its own size (past RATIO_FLOOR_BYTES)."""
    ratio = settings.ARCHIVE_MAX_RATIO
    if declared > RATIO_FLOOR_BYTES and declared > ratio * max(size, 1):
        raise _refuse(
            f"The archive expands to {_size_text(declared)} from {_size_text(size)}, more than {ratio:g} times "
            "its size (ARCHIVE_MAX_RATIO): a decompression bomb; it was refused before anything was stored."
        )


@dataclass(frozen=True)
class ZipLayout:
    """A zip whose layout was checked: its entries, their declared uncompressed total and the file's size."""

    entries: int
    declared_bytes: int
    size: int


def _end_record(stream: IO[bytes]) -> list[Any] | None:
    # zipfile's own reader of the end-of-central-directory record (zip64 included); private
    # but unchanged since Python 2, and what ZipFile itself trusts.
    reader: Callable[[IO[bytes]], list[Any] | None] = getattr(zipfile, "_EndRecData")  # noqa: B009
    return reader(stream)


def zip_layout(stream: IO[bytes], limits: ArchiveLimits) -> ZipLayout:
    """Check that a zip is one well-formed archive from its first byte to its end, reading only its directory.

    The first local header sits at offset 0, the central directory lies where the end
    record says (nothing was prepended: a tar whose tail is a zip is refused), every entry's
    local header is where the directory says, and entries neither overlap (the
    overlapping-entries bomb) nor leave gaps. The entry count is judged from the end
    record before the directory is parsed. InvalidInput names the problem.
    """
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    if stream.read(4) != ZIP_LOCAL_MAGIC:
        raise _refuse(
            "The file does not begin with a zip entry: data before the archive (or an empty archive) is refused; "
            "upload the zip file itself."
        )
    try:
        end = _end_record(stream)
        if not end:
            raise _refuse("The file is not a readable zip archive (no end record: it may be corrupt or truncated).")
        entries = int(end[ECD_ENTRIES])
        limits.entries_check(entries)
        if end[ECD_SIZE] > MAX_ZIP_DIRECTORY_BYTES:
            raise _refuse(
                f"The zip's central directory takes {_size_text(end[ECD_SIZE])}, more than "
                f"{_size_text(MAX_ZIP_DIRECTORY_BYTES)}; it was refused."
            )
        # Where the directory is, against where the end record says it is: they differ when
        # bytes were prepended (zipfile accepts that and shifts every offset).
        directory_end = end[ECD_LOCATION]
        if end[ECD_SIGNATURE] == ZIP64_END_MAGIC:
            directory_end -= ZIP64_END_SIZES
        if directory_end - end[ECD_SIZE] != end[ECD_OFFSET]:
            raise _refuse(
                "The zip's central directory is not where its end record says (data was prepended to the archive); "
                "it was refused."
            )
        infos = zipfile.ZipFile(stream).infolist()
        if len(infos) != entries:
            raise _refuse(f"The zip's end record counts {entries} entries but its directory lists {len(infos)}.")
        declared = _entries_layout_check(stream, infos, start_dir=int(end[ECD_OFFSET]))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error, NotImplementedError):
        raise _refuse("The file is not a readable zip archive (it may be corrupt or truncated).") from None
    finally:
        stream.seek(0)
    return ZipLayout(entries=entries, declared_bytes=declared, size=size)


def _entries_layout_check(stream: IO[bytes], infos: list[zipfile.ZipInfo], start_dir: int) -> int:
    """Entries back to back from offset 0 to the central directory; returns their declared total."""
    position = 0
    declared = 0
    previous_flags = 0
    for info in sorted(infos, key=lambda item: item.header_offset):
        gap = info.header_offset - position
        if gap != 0 and not (position > 0 and gap in ZIP_DESCRIPTOR_SIZES and previous_flags & ZIP_DESCRIPTOR_FLAG):
            what = "overlaps the one before it" if gap < 0 else f"leaves {gap} unexplained bytes before it"
            raise _refuse(f"The zip entry {info.filename!r} {what}; the archive was refused.")
        stream.seek(info.header_offset)
        header = ZIP_LOCAL_HEADER.unpack(stream.read(ZIP_LOCAL_HEADER.size))
        if header[0] != ZIP_LOCAL_MAGIC:
            raise _refuse(f"The zip entry {info.filename!r} has no local header where the directory says.")
        position = info.header_offset + ZIP_LOCAL_HEADER.size + header[10] + header[11] + info.compress_size
        previous_flags = info.flag_bits
        declared += max(info.file_size, 0)
    gap = start_dir - position
    if gap != 0 and not (infos and gap in ZIP_DESCRIPTOR_SIZES and previous_flags & ZIP_DESCRIPTOR_FLAG):
        raise _refuse("The zip's central directory does not follow its last entry; the archive was refused.")
    return declared


def zip_limits_check(stream: IO[bytes], limits: ArchiveLimits) -> ZipLayout:
    """The layout checks of zip_layout, then the entry, size and ratio limits, before anything is stored."""
    layout = zip_layout(stream, limits)
    limits.bytes_check(layout.declared_bytes)
    ratio_check(layout.declared_bytes, layout.size)
    return layout


def _clean_name(raw: str) -> str | None:
    """The entry's normalised POSIX path, None for the archive's own "." entry; unsafe names raise."""
    name = raw.replace("\\", "/")
    if "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _refuse(f"The archive contains an unsafe path {raw!r} (absolute or a drive letter); it was refused.")
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if ".." in parts:
        raise _refuse(f"The archive contains an unsafe path {raw!r} ('..' leaves the folder); it was refused.")
    return "/".join(parts) or None


class _Budget:
    """Counts entries and bytes against the HF_ARCHIVE_* limits and ARCHIVE_MAX_RATIO (of `size`, the archive's)."""

    def __init__(self, size: int) -> None:
        self.entries = 0
        self.declared = 0
        self.size = size
        self.limits = ArchiveLimits.huggingface()

    def entry(self, name: str, size: int) -> None:
        self.entries += 1
        self.limits.entries_check(self.entries, at=name)
        self.declared += max(size, 0)
        self.limits.bytes_check(self.declared, at=name)
        ratio_check(self.declared, self.size)


# Decompressed bytes a .tar.gz may hold beyond its members' declared data: one header block and
# the padding per entry, plus this much for pax headers and long names (which tarfile keeps in
# memory whole, so a header claiming gigabytes must not be read) and the end blocks.
TAR_HEADER_SLACK = 1024 * 1024


class _Inflated:
    """The decompressed side of a .tar.gz as tarfile reads it, never run past what the members declared.

    tarfile reads a pax header or a GNU long name into memory whole; counting here refuses
    one that claims gigabytes before it is read, as the declared sizes bound everything else.
    """

    def __init__(self, source: gzip.GzipFile, budget: _Budget) -> None:
        self.source, self.budget, self.count = source, budget, 0

    def _allowed(self) -> int:
        return self.budget.declared + 1024 * (self.budget.entries + 1) + TAR_HEADER_SLACK + MAX_TRAILER_BYTES

    def read(self, size: int = -1) -> bytes:
        room = self._allowed() - self.count
        chunk = self.source.read(room + 1 if size < 0 or size > room else size)
        self.count += len(chunk)
        if self.count > self._allowed():
            raise _refuse(
                f"The archive holds more than {TAR_HEADER_SLACK // 1024} KiB of tar headers (pax records or long "
                "names) beyond its files: a decompression bomb; it was refused."
            )
        return chunk

    def __enter__(self) -> _Inflated:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _stream_size(stream: IO[bytes]) -> int:
    position = stream.tell()
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(position)
    return size


def _copy(source: IO[bytes], name: str, declared: int, sink: Callable[[bytes], object]) -> int:
    """Pass a member's bytes to `sink`, refusing it once it yields more than its header said."""
    count = 0
    for chunk in iter(lambda: source.read(CHUNK), b""):
        count += len(chunk)
        if count > declared:
            raise _refuse(
                f"The archive member {name!r} expands beyond the {declared} bytes its header declares "
                "(a decompression bomb or a corrupt archive); it was refused."
            )
        sink(chunk)
    if count != declared:
        raise _refuse(f"The archive member {name!r} is truncated ({count} of {declared} bytes); it was refused.")
    return count


def _zip_entries(stream: IO[bytes]) -> Iterator[tuple[str, int, Callable[[], IO[bytes]] | None]]:
    """(name, declared size, opener or None for a folder) per entry, all checked before the first read."""
    layout = zip_layout(stream, ArchiveLimits.huggingface())
    try:
        archive = zipfile.ZipFile(stream)
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise _refuse("The file is not a readable zip archive (it may be corrupt or truncated).") from None
    budget = _Budget(layout.size)
    entries: list[tuple[str, int, zipfile.ZipInfo]] = []
    for info in infos:
        name = _clean_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _refuse(f"The archive contains a symbolic link {info.filename!r}; links are refused.")
        if info.flag_bits & ZIP_ENCRYPTED:
            raise _refuse(f"The archive member {info.filename!r} is encrypted; upload an archive without a password.")
        if info.compress_type not in ZIP_METHODS:
            raise _refuse(
                f"The archive member {info.filename!r} uses a compression method ({info.compress_type}) that "
                "cannot be read here; use deflate (the zip default) or store."
            )
        budget.entry(info.filename, 0 if info.is_dir() else info.file_size)
        if name is not None:
            entries.append((name, info.file_size, info))
    for name, size, info in entries:
        if info.is_dir():
            yield name, 0, None
        else:
            yield name, size, lambda info=info: archive.open(info)  # type: ignore[misc]


def _tar_entries(stream: IO[bytes]) -> Iterator[tuple[str, int, Callable[[], IO[bytes]] | None]]:
    """(name, declared size, opener or None for a folder) per entry, checked as the stream goes by.

    The gzip stream is read once, front to back: a member's header is checked before its
    data is decompressed, so a header announcing a huge member stops the scan.
    """
    budget = _Budget(_stream_size(stream))
    try:
        # gzip.GzipFile (not tarfile's own "r|gz") checks the stream's CRC and length at its
        # end, and tarfile ends quietly at a garbled header: so the stream is read to its end.
        with (
            gzip.GzipFile(fileobj=stream, mode="rb") as gunzipped,
            _Inflated(gunzipped, budget) as unzipped,
            tarfile.open(fileobj=unzipped, mode="r|") as archive,  # type: ignore[call-overload]
        ):
            for member in archive:
                name = _clean_name(member.name)
                if member.issym() or member.islnk():
                    raise _refuse(
                        f"The archive contains a link {member.name!r} → {member.linkname!r}; links are refused."
                    )
                if not (member.isfile() or member.isdir()):
                    raise _refuse(
                        f"The archive contains {member.name!r}, which is not a regular file or folder "
                        "(a device, pipe or other special file); it was refused."
                    )
                budget.entry(member.name, member.size if member.isfile() else 0)
                if name is None:
                    continue
                if member.isdir():
                    yield name, 0, None
                else:
                    yield name, member.size, lambda member=member: archive.extractfile(member)  # type: ignore[misc,return-value]
            _trailer_drain(unzipped)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise _refuse(f"The file is not a readable .tar.gz archive ({exc}); it may be corrupt or truncated.") from None


def _trailer_drain(unzipped: _Inflated) -> None:
    """Read what follows the tar's last member (its end blocks) to the gzip's end, which checks its CRC."""
    left = MAX_TRAILER_BYTES
    while chunk := unzipped.read(min(CHUNK, left + 1)):
        left -= len(chunk)
        if left < 0:
            raise _refuse(
                f"The archive holds more than {MAX_TRAILER_BYTES} bytes after its last member; it was refused."
            )


def _entries(stream: IO[bytes], kind: str) -> Iterator[tuple[str, int, Callable[[], IO[bytes]] | None]]:
    stream.seek(0)
    if kind == ZIP:
        return _zip_entries(stream)
    return _tar_entries(stream)


def _root_of(names: list[str]) -> str:
    """The single top-level folder every file sits under, or "" when there is none."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return tops.pop()
    return ""


class Sink:
    """Where a member's bytes go while an archive is walked (nowhere, by default)."""

    def write(self, chunk: bytes) -> None:
        return None

    def close(self) -> None:
        return None


class _Captured(dict[str, bytes]):
    """The members' bytes kept by a scan, with their total held under MAX_KEPT_BYTES."""

    held = 0

    def hold(self, name: str, count: int) -> None:
        self.held += count
        if self.held > MAX_KEPT_BYTES:
            raise _refuse(
                f"The archive's configuration files and weight headers pass {MAX_KEPT_BYTES // 1024**2} MiB "
                f"(at {name!r}); it was refused."
            )


class _Keep(Sink):
    """Keeps a member's bytes in memory: a small file whole (config.json), or a large one's head."""

    def __init__(self, name: str, into: _Captured, keep: int, then: Sink) -> None:
        self.name, self.into, self.keep, self.then = name, into, keep, then
        self.buffer = bytearray()

    def write(self, chunk: bytes) -> None:
        self.then.write(chunk)
        if self.keep != WHOLE:
            chunk = chunk[: max(self.keep - len(self.buffer), 0)]
        elif len(self.buffer) + len(chunk) > MAX_READ_BYTES:
            raise _refuse(f"{self.name!r} is larger than {MAX_READ_BYTES // 1024**2} MiB; it was refused.")
        self.into.hold(self.name, len(chunk))
        self.buffer += chunk

    def close(self) -> None:
        self.then.close()
        self.into[self.name] = bytes(self.buffer)


class _File(Sink):
    """Writes a member under the unpacking folder (a fresh file: "x" mode never follows anything)."""

    def __init__(self, target: Path, name: str) -> None:
        destination = target.joinpath(*name.split("/"))
        destination.parent.mkdir(parents=True, exist_ok=True)
        self.handle = destination.open("xb")

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)

    def close(self) -> None:
        self.handle.close()


def _parents_check(name: str, files: dict[str, int], parents: set[str]) -> None:
    """Refuse a file that is also another file's folder (unpacking could not write both)."""
    parts = name.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts))]
    clash = name if name in parents else next((prefix for prefix in prefixes if prefix in files), None)
    if clash is not None:
        raise _refuse(f"The archive holds {clash!r} both as a file and as a folder; it was refused.")
    parents.update(prefixes)


def _walk(stream: IO[bytes], kind: str, sink_for: Callable[[str], Sink]) -> dict[str, int]:
    """Go through every entry, passing each file's bytes (counted) to `sink_for(name)`.

    Returns the files (name → size); raises InvalidInput on anything unsafe.
    """
    files: dict[str, int] = {}
    folders: set[str] = set()
    parents: set[str] = set()
    actual = 0
    limit = settings.HF_ARCHIVE_MAX_BYTES
    try:
        for name, size, opener in _entries(stream, kind):
            if name.split("/", 1)[0] in IGNORED_ROOTS or name.rsplit("/", 1)[-1] in IGNORED_NAMES:
                continue
            if opener is None:
                folders.add(name)
                continue
            if name in files:
                raise _refuse(f"The archive holds {name!r} twice; it was refused.")
            _parents_check(name, files, parents)
            sink = sink_for(name)
            try:
                with opener() as source:
                    actual += _copy(source, name, size, sink.write)
            finally:
                sink.close()
            if actual > limit:
                raise _refuse(f"The archive expands to more than {limit / 1024**2:.0f} MiB (HF_ARCHIVE_MAX_BYTES).")
            files[name] = size
    except (zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError, tarfile.TarError) as exc:
        raise _refuse(f"The archive is corrupt ({exc}); it was refused.") from None
    clash = next((name for name in files if name in folders), None)
    if clash is not None:
        raise _refuse(f"The archive holds {clash!r} both as a file and as a folder; it was refused.")
    if not files:
        raise _refuse("The archive holds no files.")
    return files


def _listing(kind: str, files: dict[str, int], captured: dict[str, bytes], wanted: Wanted) -> ArchiveListing:
    root = _root_of(list(files))
    strip = len(root) + 1 if root else 0
    relative = {name[strip:]: size for name, size in files.items()}
    contents = {name[strip:]: data for name, data in captured.items() if wanted(name[strip:])}
    return ArchiveListing(kind=kind, root=root, files=relative, total_bytes=sum(files.values()), contents=contents)


def _kept(name: str, wanted: Wanted) -> int:
    # The root folder is known only once the last entry has gone by (a tar is one stream),
    # so a member is kept when it is wanted either as it stands or under a stripped root.
    as_is = wanted(name)
    stripped = wanted(name.split("/", 1)[1]) if "/" in name else 0
    return WHOLE if WHOLE in (as_is, stripped) else max(as_is, stripped)


def _sink(name: str, wanted: Wanted, captured: _Captured, then: Sink) -> Sink:
    keep = _kept(name, wanted)
    return _Keep(name, captured, keep, then) if keep else then


# Folders of tools, not of the model, left out when a directory is packed.
SKIPPED_FOLDERS = frozenset({".git", ".cache", "__pycache__", ".ipynb_checkpoints"})
# Already-compressed weights are stored, not deflated again (deflating gigabytes buys nothing).
STORED_SUFFIXES = (".safetensors", ".model")


def directory_zip(directory: Path, target: IO[bytes]) -> int:
    """Pack a model directory into a zip written to `target`, its files under the directory's name.

    Files are streamed from disk (zipfile copies them in chunks); the folders of tools
    (.git, .cache) are left out. Returns the number of files packed.
    """
    count = 0
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if SKIPPED_FOLDERS.intersection(relative.parts) or not path.is_file():
                continue
            compression = zipfile.ZIP_STORED if path.name.endswith(STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
            archive.write(path, f"{directory.name}/{relative.as_posix()}", compress_type=compression)
            count += 1
    return count


def archive_scan(stream: IO[bytes], wanted: Wanted) -> ArchiveListing:
    """Check a whole archive without writing anything, keeping the bytes that `wanted` asks for.

    Every member is decompressed once and counted (a zip's CRC is verified on the way), so
    an archive that passes expands to what its headers say.
    """
    kind = archive_kind(stream)
    if kind is None:
        raise _refuse("The file is neither a .zip nor a .tar.gz archive.")
    captured = _Captured()

    def sink_for(name: str) -> Sink:
        return _sink(name, wanted, captured, Sink())

    try:
        files = _walk(stream, kind, sink_for)
    finally:
        stream.seek(0)
    return _listing(kind, files, captured, wanted)


def archive_unpack(stream: IO[bytes], target: Path, wanted: Wanted) -> tuple[ArchiveListing, Path]:
    """Unpack an archive under the empty folder `target`, with the checks of archive_scan.

    Returns the listing and the folder holding the files (`target` or `target/root`).
    On a refusal the caller removes `target`, which may hold part of the files.
    """
    kind = archive_kind(stream)
    if kind is None:
        raise _refuse("The file is neither a .zip nor a .tar.gz archive.")
    captured = _Captured()

    def sink_for(name: str) -> Sink:
        return _sink(name, wanted, captured, _File(target, name))

    try:
        files = _walk(stream, kind, sink_for)
    finally:
        stream.seek(0)
    listing = _listing(kind, files, captured, wanted)
    return listing, target / listing.root if listing.root else target


__all__ = [
    "TAR_GZ",
    "WHOLE",
    "ZIP",
    "ArchiveLimits",
    "ArchiveListing",
    "Sink",
    "Wanted",
    "ZipLayout",
    "archive_kind",
    "archive_scan",
    "archive_unpack",
    "directory_zip",
    "ratio_check",
    "zip_layout",
    "zip_limits_check",
]
