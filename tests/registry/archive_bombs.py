"""Hostile archives, built by hand (zip headers written byte by byte) so that they are exactly what they claim."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

ZIP64_LIMIT = 0xFFFFFFFF
DEFLATED = 8
STORED = 0


@dataclass(frozen=True)
class Entry:
    """One zip entry: its name, the bytes stored for it, and what its headers say it expands to."""

    name: str
    data: bytes = b""  # as stored (deflate-compressed when method is DEFLATED)
    declared: int | None = None  # uncompressed size the headers claim (None: len of the real content)
    method: int = STORED
    crc: int = 0


def deflated(name: str, content: bytes, declared: int | None = None) -> Entry:
    """An entry of deflated `content`; `declared` may claim more than it holds."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(content) + compressor.flush()
    return Entry(name, data, len(content) if declared is None else declared, DEFLATED, zlib.crc32(content))


def stored(name: str, content: bytes) -> Entry:
    return Entry(name, content, len(content), STORED, zlib.crc32(content))


def zip_of(entries: list[Entry], *, overlap_last: bool = False, hidden: bytes = b"") -> bytes:
    """A zip holding `entries` (zip64 records where a size or the count needs them).

    `overlap_last` points the last directory entry at the first entry's local header: the
    overlapping-entries bomb, many directory entries sharing one payload. `hidden` is
    written after the first entry's data, every offset still consistent.
    """
    out = io.BytesIO()
    directory = io.BytesIO()
    first_offset = 0
    for index, entry in enumerate(entries):
        name = entry.name.encode()
        declared = len(entry.data) if entry.declared is None else entry.declared
        offset = out.tell()
        if index == 0:
            first_offset = offset
        zip64 = declared >= ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 1, 16, declared, len(entry.data)) if zip64 else b""
        sizes = (ZIP64_LIMIT, ZIP64_LIMIT) if zip64 else (len(entry.data), declared)
        version = 45 if zip64 else 20
        if not (overlap_last and index == len(entries) - 1):
            out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", version, 0, entry.method, 0, 0, entry.crc, *sizes,
                                  len(name), len(extra)))  # fmt: skip
            out.write(name + extra + entry.data)
            if index == 0:
                out.write(hidden)
        else:
            offset = first_offset
        cd_extra = struct.pack("<HHQQ", 1, 16, declared, len(entry.data)) if zip64 else b""
        directory.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", version, version, 0, entry.method, 0, 0, entry.crc,
                                    *sizes, len(name), len(cd_extra), 0, 0, 0, 0, offset))  # fmt: skip
        directory.write(name + cd_extra)
    start = out.tell()
    out.write(directory.getvalue())
    size = out.tell() - start
    count = len(entries)
    if count > 0xFFFF:
        end64 = out.tell()
        out.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, start))
        out.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, end64, 1))
        count = 0xFFFF
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, size, start, 0))
    return out.getvalue()


def torchscript_entries(path: Path) -> list[Entry]:
    """A real TorchScript file's entries, stored again by hand (so more can be added beside them)."""
    with zipfile.ZipFile(path) as archive:
        return [stored(info.filename, archive.read(info)) for info in archive.infolist()]


def declared_bomb(torchscript: Path, declared: int) -> bytes:
    """A real TorchScript archive plus one entry of ~60 kB that declares `declared` bytes."""
    entries = torchscript_entries(torchscript)
    root = entries[0].name.split("/", 1)[0]
    return zip_of([*entries, deflated(f"{root}/data/999", b"\0" * 60_000_000, declared=declared)])


def many_entries(torchscript: Path, count: int) -> bytes:
    """A real TorchScript archive padded with empty entries up to `count` entries."""
    entries = torchscript_entries(torchscript)
    root = entries[0].name.split("/", 1)[0]
    padding = [stored(f"{root}/extra/{index}", b"") for index in range(count - len(entries))]
    return zip_of(entries + padding)


def tar_with_links(tail: bytes) -> bytes:
    """An uncompressed tar holding a symlink to /etc/passwd and a hard link, followed by `tail` (a zip)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        link = tarfile.TarInfo("passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        hard = tarfile.TarInfo("shadow")
        hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/shadow"
        archive.addfile(hard)
    return buffer.getvalue() + tail
