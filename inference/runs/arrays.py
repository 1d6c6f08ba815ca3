"""Arrays in and out of tracked runs: the one `.npz` reader of uploads (with its size check),
the row checks against a signature, and the runs' stored `.npz` files.

Uploads are read here once, in the web process, and stored normalised to `.npz`, so
workers never parse user files; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
import zlib
from typing import IO, Any

import numpy as np
from django.core.files import File
from django.template.defaultfilters import filesizeformat

from core.datatypes import NUMPY_DTYPES
from core.errors import InvalidInput, PayloadTooLarge
from registry.artifacts import artifact_storage
from registry.signatures import shape_fits

# The form field errors about an uploaded file point at.
FILE = "file"
# A compressed .npz may not expand to more than this many times the upload limit.
NPZ_EXPANSION = 8
_CORRUPT = "The file is not a readable .npz archive (it may be corrupt or truncated); save it with numpy.savez."
_ACCEPTS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}
_KIND_NAMES = {
    "f": "floating-point numbers",
    "i": "integers",
    "u": "unsigned integers",
    "b": "booleans",
    "U": "strings",
    "S": "byte strings",
    "O": "Python objects",
    "c": "complex numbers",
    "M": "datetimes",
    "m": "timedeltas",
    "V": "raw records",
}


# --- uploads ---------------------------------------------------------------------------------


def npz_arrays(stream: IO[bytes], upload_limit: int) -> dict[str, np.ndarray]:
    """Every array of an uploaded `.npz`, refused before reading if it expands past
    NPZ_EXPANSION times `upload_limit` (a zip bomb), and never unpickled."""
    try:
        with zipfile.ZipFile(stream) as archive:
            expanded = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise InvalidInput(_CORRUPT, field=FILE) from None
    limit = upload_limit * NPZ_EXPANSION
    if expanded > limit:
        raise PayloadTooLarge(
            f"The .npz file expands to {filesizeformat(expanded)}, more than {filesizeformat(limit)}."
        )
    stream.seek(0)
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(stream, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise InvalidInput(
                            f"Array {key!r} is an object array (pickled Python objects), which is never loaded; "
                            "save numeric arrays.",
                            field=FILE,
                        ) from None
                    raise InvalidInput(f"Array {key!r} is not a readable array: {exc}", field=FILE) from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error):
        raise InvalidInput(_CORRUPT, field=FILE) from None
    return arrays


def batched_layout(signature: dict[str, Any]) -> bool:
    """True when every input's first dimension is the batch (-1): rows are that dimension."""
    inputs = signature.get("inputs", [])
    return bool(inputs) and all(spec["shape"] and spec["shape"][0] == -1 for spec in inputs)


def inputs_checked(
    arrays: dict[str, np.ndarray], specs: list[dict[str, Any]], batched: bool, *, what: str, more: str = ""
) -> dict[str, np.ndarray]:
    """The signature's inputs among uploaded arrays: each present under its name, nothing else
    (but `more`, said in the message), rows checked and cast. `what` names the upload."""
    names = [spec["name"] for spec in specs]
    missing = [name for name in names if name not in arrays]
    extra = [key for key in arrays if key not in names]
    if missing or extra:
        problem = f"has no array named {missing[0]!r}" if missing else f"has an unexpected array {extra[0]!r}"
        raise InvalidInput(
            f"{what} {problem}: it holds {sorted(arrays)}, the model's inputs are {names}{more}.", field=FILE
        )
    return {spec["name"]: rows_checked(arrays[spec["name"]], spec, batched) for spec in specs}


def _shape_text(row_shape: list[int]) -> str:
    return "[" + ", ".join(["N", *("*" if d == -1 else str(d) for d in row_shape)]) + "]"


def rows_checked(array: np.ndarray, spec: dict[str, Any], batched: bool) -> np.ndarray:
    """An input's array of N rows, checked against the signature's row shape and cast to its datatype."""
    row_shape = spec["shape"][1:] if batched else spec["shape"]
    if array.ndim == 0 or not shape_fits(list(array.shape[1:]), row_shape):
        raise InvalidInput(
            f"Input {spec['name']!r} has shape {list(array.shape)}; the model expects "
            f"{_shape_text(row_shape)} (N rows; * is any size).",
            field=FILE,
        )
    return value_cast(array, spec, "")


def value_cast(array: np.ndarray, spec: dict[str, Any], where: str) -> np.ndarray:
    """The array in the input's datatype, refusing conversions that change the kind of value."""
    target = NUMPY_DTYPES[spec["datatype"]]
    kind = array.dtype.kind
    if kind not in _ACCEPTS[target.kind]:
        raise InvalidInput(
            f"{where}input {spec['name']!r} holds {_KIND_NAMES.get(kind, 'values')} ({array.dtype}); "
            f"the model expects {spec['datatype']}.",
            field=FILE,
        )
    if target.kind in "iu" and array.size and array.dtype != target:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(
                f"{where}input {spec['name']!r} has values outside the range of {spec['datatype']}.", field=FILE
            )
    return array.astype(target, copy=False)


# --- stored files ----------------------------------------------------------------------------


def npz_save(name: str, arrays: dict[str, np.ndarray]) -> str:
    """Write arrays as an uncompressed .npz to artifact storage (any key, even 'file')."""
    with tempfile.TemporaryFile() as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, array in arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
        tmp.seek(0)
        return artifact_storage().save(name, File(tmp, name=os.path.basename(name)))


def npz_load(path: str) -> dict[str, np.ndarray]:
    """All arrays of a stored .npz (never unpickled)."""
    with artifact_storage().open(path, "rb") as stream, np.load(stream, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def paths_delete(paths: list[str]) -> None:
    """Remove stored files; one already gone is not an error."""
    storage = artifact_storage()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            storage.delete(path)


def folder_delete(prefix: str) -> None:
    """Remove everything stored under a folder, strays of crashed runs included."""
    storage = artifact_storage()
    try:
        folders, files = storage.listdir(prefix)
    except (FileNotFoundError, NotImplementedError):
        return
    for folder in folders:
        folder_delete(f"{prefix}/{folder}")
    paths_delete([f"{prefix}/{name}" for name in files])
    if hasattr(storage, "path"):
        with contextlib.suppress(OSError, NotImplementedError):
            os.rmdir(storage.path(prefix))
