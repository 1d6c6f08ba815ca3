"""Batch prediction jobs: submit a file of inputs, run it on a worker in chunks, cancel, delete.

The web process checks the whole file against the version's signature before it writes
anything, and stores it normalised to `.npz` (so workers never parse user JSON); a
refused file leaves no row and no stored file. Workers save outputs in parts as they go,
so a redelivered run resumes where the last one saved and a run nearing the task time
limit hands the rest to a fresh task instead of being killed (see inference/tasks.py).

A job on a text-generation version takes JSON lines of prompts (or chats) instead, checked
line by line and stored as canonical JSON lines (inference.completions); its result is a
JSON lines file of completions.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import IO, Any

import numpy as np
from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import QuerySet
from django.template.defaultfilters import filesizeformat

from core import broker
from core.datatypes import NUMPY_DTYPES
from core.errors import Conflict, InvalidInput, PayloadTooLarge
from inference.completions import Defaults, prompts_dump, prompts_read
from inference.models import BatchJob, DataFormat, JobStatus
from inference.runs.arrays import (
    FILE,
    batched_layout,
    folder_delete,
    inputs_checked,
    npz_arrays,
    npz_save,
    value_cast,
)
from inference.runs.lifecycle import run_cancel, run_lookup, stale_expire
from inference.tasks import PROMPTS_SUFFIX, job_enqueue
from registry import selectors
from registry.access import Action
from registry.artifacts import artifact_storage
from registry.models import ModelVersion
from registry.signatures import shape_fits
from registry.text_tasks import TextTask

logger = logging.getLogger(__name__)

MAX_CHUNK_SIZE = 65_536


# --- reading and checking inputs ---------------------------------------------------------


def _npz_read(stream: IO[bytes], specs: list[dict[str, Any]], batched: bool) -> dict[str, np.ndarray]:
    arrays = npz_arrays(stream, settings.BATCH_INPUT_MAX_BYTES)
    return inputs_checked(arrays, specs, batched, what="The .npz file")


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
            rows[name].append(value_cast(value, spec, where))
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


def generation_defaults(version: ModelVersion, max_tokens: int | None, temperature: float | None) -> Defaults:
    """The settings a generation job's lines fall back to: the job's, else the version's, else the portal's."""
    limit = version.max_tokens_limit or settings.GENERATION_MAX_TOKENS_LIMIT
    default = max_tokens or min(version.max_tokens_default or settings.GENERATION_MAX_TOKENS_DEFAULT, limit)
    if not 1 <= default <= limit:
        raise InvalidInput(f"max_tokens must be from 1 to {limit} for this model.", field="max_tokens")
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise InvalidInput("temperature must be between 0 and 2.", field="temperature")
    return Defaults(max_tokens=default, max_tokens_limit=limit, temperature=1.0 if temperature is None else temperature)


def prompts_file_read(file: File, filename: str, defaults: Defaults) -> list[dict[str, Any]]:
    """The checked requests of a generation job's file (JSON lines only); InvalidInput says what is wrong."""
    file.seek(0)
    head = file.read(8)
    file.seek(0)
    if not head:
        raise InvalidInput("The uploaded file is empty.", field=FILE)
    if head.startswith((b"PK", b"\x93NUMPY")) or filename.lower().endswith((".npz", ".npy")):
        raise InvalidInput(
            'A text-generation job takes JSON lines: one {"prompt": "..."} or {"messages": [...]} per line.',
            field=FILE,
        )
    return prompts_read(file, defaults)


# --- storage ------------------------------------------------------------------------------


def job_files_delete(prefix: str) -> None:
    """Remove everything stored under a job's folder, strays of crashed runs included."""
    folder_delete(prefix)


def job_result_open(job: BatchJob) -> IO[bytes]:
    """The stored result of a succeeded job (409 before that)."""
    if job.status != JobStatus.SUCCEEDED or not job.result_path:
        raise Conflict(f"Job {job.short_id} is {job.status}; its result can be downloaded once it has succeeded.")
    return artifact_storage().open(job.result_path, "rb")


def job_generates(job: BatchJob) -> bool:
    """Whether the job runs prompts through a text-generation model (its input is stored as prompts)."""
    return job.input_path.endswith(PROMPTS_SUFFIX)


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
    return run_lookup(jobs_visible_to(user), job_id)


def jobs_expire_stale() -> int:
    """Fail running jobs that no worker can still be running; returns how many (Celery beat runs it)."""
    return stale_expire(BatchJob)


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
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> BatchJob:
    """Check a file of inputs against the addressed version and queue a job for it.

    `max_tokens` and `temperature` are the defaults of a generation job's lines.
    """
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
    generative = target.task == TextTask.TEXT_GENERATION
    requests: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    input_format: str
    if generative:
        if result_format == DataFormat.NPZ:
            raise InvalidInput("A text-generation job writes JSON lines; leave result_format empty.",
                               field="result_format")  # fmt: skip
        requests = prompts_file_read(file, filename, generation_defaults(target, max_tokens, temperature))
        input_format, rows = DataFormat.JSONL, len(requests)
        chunk_size = chunk_size or settings.GENERATION_MAX_SEQUENCES
    else:
        input_format, arrays = input_read(file, filename, target.signature)
        rows = len(next(iter(arrays.values())))

    # Refused (503) before anything is stored while the broker cannot take the job.
    broker.broker_check()
    job_id = uuid.uuid4()
    prefix = f"jobs/{job_id}"
    try:
        if generative:
            name = f"input{PROMPTS_SUFFIX}"
            path = artifact_storage().save(f"{prefix}/{name}", ContentFile(prompts_dump(requests), name=name))
        else:
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
                total_rows=rows,
                chunk_size=chunk_size or target.max_batch_size,
            )
            transaction.on_commit(lambda: job_enqueue(job.pk))
    except BaseException:
        job_files_delete(prefix)
        raise
    logger.info("queued %s: %s rows from %s", job, job.total_rows, filename or "upload")
    return job


def job_cancel(*, actor: Any, job: BatchJob) -> BatchJob:
    """Cancel a job: a queued one at once, a running one between two chunks."""
    cancelled = run_cancel(BatchJob, job.pk)
    logger.info("%s: cancel requested by %s", cancelled, getattr(actor, "username", actor))
    return cancelled


def job_delete(*, actor: Any, job: BatchJob) -> None:
    """Delete a job that is not running, and (after commit) its stored files."""
    prefix = job.storage_prefix
    with transaction.atomic():
        deleted, _ = BatchJob.objects.filter(pk=job.pk).exclude(status=JobStatus.RUNNING).delete()
        if not deleted:
            raise Conflict(f"Job {job.short_id} is running; cancel it and delete it once it has stopped.")
        transaction.on_commit(lambda: job_files_delete(prefix))
    logger.info("%s deleted by %s", job, getattr(actor, "username", actor))
