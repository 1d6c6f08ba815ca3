"""Batch prediction jobs: submit a file of inputs, run it on a worker in chunks, cancel, delete.

The web process checks the whole file against the version's signature before it writes
anything, and stores it normalised to `.npz` (so workers never parse user JSON); a
refused file leaves no row and no stored file. Workers save outputs in parts as they go,
so a redelivered run resumes where the last one saved and a run nearing the task time
limit hands the rest to a fresh task instead of being killed (see inference/tasks.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import uuid
import zipfile
import zlib
from datetime import timedelta
from typing import IO, Any

import numpy as np
from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.db.models import QuerySet
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from core.datatypes import NUMPY_DTYPES
from core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from inference.models import ACTIVE_STATUSES, BatchJob, DataFormat, JobStatus
from registry import selectors
from registry.access import Action
from registry.artifacts import artifact_storage
from registry.signatures import shape_fits

logger = logging.getLogger(__name__)

MAX_CHUNK_SIZE = 65_536
# A compressed .npz may not expand to more than this many times the upload limit.
NPZ_EXPANSION = 8
FILE = "file"
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


# --- reading and checking inputs ---------------------------------------------------------


def batched_layout(signature: dict[str, Any]) -> bool:
    """True when every input's first dimension is the batch (-1): rows are that dimension."""
    inputs = signature.get("inputs", [])
    return bool(inputs) and all(spec["shape"] and spec["shape"][0] == -1 for spec in inputs)


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
    return _cast(array, spec, "")


def _cast(array: np.ndarray, spec: dict[str, Any], where: str) -> np.ndarray:
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


def _npz_read(stream: IO[bytes], specs: list[dict[str, Any]], batched: bool) -> dict[str, np.ndarray]:
    corrupt = "The file is not a readable .npz archive (it may be corrupt or truncated); save it with numpy.savez."
    try:
        with zipfile.ZipFile(stream) as archive:
            expanded = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise InvalidInput(corrupt, field=FILE) from None
    limit = settings.BATCH_INPUT_MAX_BYTES * NPZ_EXPANSION
    if expanded > limit:
        raise PayloadTooLarge(
            f"The .npz file expands to {filesizeformat(expanded)}, more than {filesizeformat(limit)}."
        )
    stream.seek(0)
    names = [spec["name"] for spec in specs]
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(stream, allow_pickle=False) as npz:
            keys = list(npz.files)
            missing = [name for name in names if name not in keys]
            extra = [key for key in keys if key not in names]
            if missing or extra:
                problem = f"has no array named {missing[0]!r}" if missing else f"has an unexpected array {extra[0]!r}"
                raise InvalidInput(
                    f"The .npz file {problem}: it holds {keys}, the model's inputs are {names}.", field=FILE
                )
            for spec in specs:
                try:
                    array = npz[spec["name"]]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise InvalidInput(
                            f"Array {spec['name']!r} is an object array (pickled Python objects), which is never "
                            "loaded; save numeric arrays.",
                            field=FILE,
                        ) from None
                    raise InvalidInput(f"Array {spec['name']!r} is not a readable array: {exc}", field=FILE) from None
                arrays[spec["name"]] = rows_checked(array, spec, batched)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error):
        raise InvalidInput(corrupt, field=FILE) from None
    return arrays


def _jsonl_read(stream: IO[bytes], specs: list[dict[str, Any]], batched: bool) -> dict[str, np.ndarray]:
    names = [spec["name"] for spec in specs]
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    first_line = 0
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError as exc:
            detail = f"{exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise InvalidInput(f"Line {number} is not valid JSON: {detail}.", field=FILE) from None
        if not isinstance(line, dict) or set(line) != set(names):
            found = sorted(line) if isinstance(line, dict) else type(line).__name__
            raise InvalidInput(
                f"Line {number} must be a JSON object with exactly the keys {names} (one example each); found {found}.",
                field=FILE,
            )
        where = f"Line {number}: "
        first_line = first_line or number
        for spec in specs:
            name = spec["name"]
            try:
                value = np.asarray(line[name])
            except ValueError:
                raise InvalidInput(
                    f"{where}input {name!r} is ragged (nested lists of different lengths).", field=FILE
                ) from None
            row_shape = spec["shape"][1:] if batched else spec["shape"]
            if not shape_fits(list(value.shape), row_shape):
                raise InvalidInput(
                    f"{where}input {name!r} has shape {list(value.shape)}; each line needs one example of shape "
                    f"{row_shape} (* or -1 is any size, no batch dimension).",
                    field=FILE,
                )
            if rows[name] and rows[name][0].shape != value.shape:
                raise InvalidInput(
                    f"{where}input {name!r} has shape {list(value.shape)} but line {first_line} had "
                    f"{list(rows[name][0].shape)}; every line of a job needs the same shape.",
                    field=FILE,
                )
            rows[name].append(_cast(value, spec, where))
    if not first_line:
        raise InvalidInput("The file has no rows: it holds no JSON lines.", field=FILE)
    return {name: np.stack(values) for name, values in rows.items()}


def input_read(file: File, filename: str, signature: dict[str, Any]) -> tuple[str, dict[str, np.ndarray]]:
    """The input format and the checked arrays (rows first) of a job's file; InvalidInput says what is wrong."""
    specs = signature.get("inputs", [])
    unsupported = [spec["name"] for spec in specs if spec["datatype"] not in NUMPY_DTYPES]
    if unsupported:
        raise InvalidInput(f"Input {unsupported[0]!r} is BYTES; batch jobs take numeric inputs only.", field=FILE)
    file.seek(0)
    head = file.read(8)
    file.seek(0)
    if not head:
        raise InvalidInput("The uploaded file is empty.", field=FILE)
    batched = batched_layout(signature)
    if head.startswith(b"\x93NUMPY"):
        raise InvalidInput(
            "This is a .npy file (one array); save the inputs with numpy.savez(path, <input name>=array, ...).",
            field=FILE,
        )
    if head.startswith(b"PK") or filename.lower().endswith(".npz"):
        input_format, arrays = DataFormat.NPZ, _npz_read(file, specs, batched)
    else:
        input_format, arrays = DataFormat.JSONL, _jsonl_read(file, specs, batched)
    counts = {name: len(array) for name, array in arrays.items()}
    if len(set(counts.values())) > 1:
        raise InvalidInput(f"The inputs have different numbers of rows {counts}; each needs one row per example.")
    if not next(iter(counts.values()), 0):
        raise InvalidInput("The file has no rows (its arrays are empty along the first axis).", field=FILE)
    return input_format, arrays


# --- storage ------------------------------------------------------------------------------


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


def job_files_delete(prefix: str) -> None:
    """Remove everything stored under a job's folder, strays of crashed runs included."""
    storage = artifact_storage()
    try:
        folders, files = storage.listdir(prefix)
    except (FileNotFoundError, NotImplementedError):
        return
    for folder in folders:
        job_files_delete(f"{prefix}/{folder}")
    paths_delete([f"{prefix}/{name}" for name in files])
    if hasattr(storage, "path"):
        with contextlib.suppress(OSError, NotImplementedError):
            os.rmdir(storage.path(prefix))


def job_result_open(job: BatchJob) -> IO[bytes]:
    """The stored result of a succeeded job (409 before that)."""
    if job.status != JobStatus.SUCCEEDED or not job.result_path:
        raise Conflict(f"Job {job.short_id} is {job.status}; its result can be downloaded once it has succeeded.")
    return artifact_storage().open(job.result_path, "rb")


# --- reads --------------------------------------------------------------------------------


def jobs_visible_to(user: Any) -> QuerySet[BatchJob]:
    """The user's own jobs; staff see every job."""
    jobs = BatchJob.objects.select_related("created_by")
    if not user.is_authenticated:
        return jobs.none()
    if user.is_active and (user.is_staff or user.is_superuser):
        return jobs
    return jobs.filter(created_by=user)


def job_get(user: Any, job_id: Any) -> BatchJob:
    """A job the user may see, else NotFound (another user's job does not exist for them)."""
    try:
        key = uuid.UUID(str(job_id))
    except ValueError:
        raise NotFound(f"Job {job_id!r} not found.") from None
    job = jobs_visible_to(user).filter(pk=key).first()
    if job is None:
        raise NotFound(f"Job {job_id} not found.")
    return job


def jobs_expire_stale() -> int:
    """Fail running jobs that no worker can still be running; returns how many.

    A dead worker's job comes back from the broker (acks_late) within its visibility
    timeout; a job silent for longer than that plus the task time limit lost its message.
    """
    timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    cutoff = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + timeout + 60)
    stale = BatchJob.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
    # A read first: the sweep runs on page views and must not take SQLite's write lock each time.
    if not stale.exists():
        return 0
    return stale.update(
        status=JobStatus.FAILED,
        finished_at=timezone.now(),
        error="The worker running this job stopped reporting and the job was not redelivered; submit it again.",
    )


# --- operations -------------------------------------------------------------------------


def job_submit(
    *,
    actor: Any,
    model_name: str,
    file: File,
    filename: str = "",
    version: int | str | None = None,
    alias: str | None = None,
    result_format: str | None = None,
    chunk_size: int | None = None,
) -> BatchJob:
    """Check a file of inputs against the addressed version and queue a job for it."""
    limit = settings.BATCH_INPUT_MAX_BYTES
    if file.size is not None and file.size > limit:
        raise PayloadTooLarge(f"The input file is larger than the limit of {filesizeformat(limit)}.")
    target = selectors.version_resolve(actor, model_name, version=version, alias=alias or None, action=Action.PREDICT)
    if not target.is_ready:
        raise Conflict(
            f"Version {target.version} of {model_name!r} is {target.status}; only ready versions run jobs.",
            field="version",
        )
    if result_format and result_format not in DataFormat.values:
        raise InvalidInput(f"result_format must be one of {', '.join(DataFormat.values)}.", field="result_format")
    if chunk_size is not None and not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidInput(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}.", field="chunk_size")
    filename = filename or getattr(file, "name", "") or ""
    input_format, arrays = input_read(file, filename, target.signature)

    job_id = uuid.uuid4()
    prefix = f"jobs/{job_id}"
    try:
        path = npz_save(f"{prefix}/input.npz", arrays)
        with transaction.atomic():
            job = BatchJob.objects.create(
                id=job_id,
                version=target,
                model_name=target.model.name,
                version_number=target.version,
                created_by=actor,
                input_format=input_format,
                result_format=result_format or input_format,
                input_filename=os.path.basename(filename)[:255],
                input_path=path,
                total_rows=len(next(iter(arrays.values()))),
                chunk_size=chunk_size or target.max_batch_size,
            )
            transaction.on_commit(lambda: job_enqueue(job.pk))
    except BaseException:
        job_files_delete(prefix)
        raise
    logger.info("queued %s: %s rows from %s", job, job.total_rows, filename or "upload")
    return job


def job_enqueue(job_id: Any) -> None:
    """Send a queued job to its model's queue; if the broker cannot take it, fail the job saying so."""
    from inference.tasks import batch_job_run

    job = BatchJob.objects.select_related("version__model").filter(pk=job_id, status=JobStatus.QUEUED).first()
    if job is None:
        return
    queue = job.version.model.serving_queue if job.version else settings.CELERY_TASK_DEFAULT_QUEUE
    try:
        batch_job_run.apply_async(args=[str(job.pk)], queue=queue)
    except Exception as exc:  # kombu raises OperationalError and friends
        logger.exception("could not enqueue %s", job)
        BatchJob.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
            status=JobStatus.FAILED,
            finished_at=timezone.now(),
            error=f"The job could not be queued (broker unavailable: {exc}). Submit it again.",
        )


def job_cancel(*, actor: Any, job: BatchJob) -> BatchJob:
    """Cancel a job: a queued one at once, a running one between two chunks."""
    with transaction.atomic():
        locked = BatchJob.objects.select_for_update().get(pk=job.pk)
        if locked.status not in ACTIVE_STATUSES:
            raise Conflict(
                f"Job {locked.short_id} is already {locked.status}; only queued or running jobs can be cancelled."
            )
        locked.cancel_requested = True
        fields = ["cancel_requested"]
        if locked.status == JobStatus.QUEUED:
            locked.status, locked.finished_at = JobStatus.CANCELLED, timezone.now()
            fields += ["status", "finished_at"]
            parts = list(locked.parts)
            transaction.on_commit(lambda: paths_delete(parts))
        # A running job is only flagged: its worker stops after the chunk in hand.
        locked.save(update_fields=fields)
    logger.info("%s: cancel requested by %s", locked, getattr(actor, "username", actor))
    return locked


def job_delete(*, actor: Any, job: BatchJob) -> None:
    """Delete a job that is not running, and (after commit) its stored files."""
    prefix = job.storage_prefix
    with transaction.atomic():
        deleted, _ = BatchJob.objects.filter(pk=job.pk).exclude(status=JobStatus.RUNNING).delete()
        if not deleted:
            raise Conflict(f"Job {job.short_id} is running; cancel it and delete it once it has stopped.")
        transaction.on_commit(lambda: job_files_delete(prefix))
    logger.info("%s deleted by %s", job, getattr(actor, "username", actor))
