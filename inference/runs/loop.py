"""The one chunked loop of tracked runs: what a chunk does and what is stored vary by kind.

`work_run` claims a run, lets its `ChunkedWork` load what it needs, feeds it the rows in
chunks, reports progress (and sees a cancel) at most every PROGRESS_SECONDS, and at the
end hands the outputs of all rows to the work to store. A resumable run also saves its
outputs in parts every CHECKPOINT_SECONDS and, before the task time limit, saves and
hands the rest to a fresh task.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction

from inference.cache import LoadedModel
from inference.runs.arrays import batched_layout, npz_load
from inference.runs.lifecycle import Claim, R, claim_heartbeat, out_of_memory, run_claim
from inference.runs.models import RunStatus
from inference.sandbox.client import SandboxedModel, model_close, model_open
from inference.services import exception_summary

logger = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]

# Progress (and the cancel flag) go through the database at most this often, and outputs
# are saved at most this often: a tiny model runs thousands of chunks a second.
PROGRESS_SECONDS = 0.5
CHECKPOINT_SECONDS = 30.0


class RunStopped(Exception):
    """Raised by a chunk that saw its run cancelled (or its claim lost) in the middle: the run stops."""


def forward(loaded: Any, arrays: dict[str, np.ndarray], start: int, stop: int, batched: bool) -> Outputs:
    """Outputs (rows first, in signature order) of rows start..stop of the input arrays."""
    if batched:
        outputs = loaded.predict({name: array[start:stop] for name, array in arrays.items()})
        for name, _, array in outputs:
            if array.ndim == 0 or array.shape[0] != stop - start:
                raise ValueError(f"output {name!r} has shape {list(array.shape)} for {stop - start} input rows")
        return {name: array for name, _, array in outputs}
    # No batch dimension in the signature: one example per forward, outputs stacked as rows.
    per_row = [loaded.predict({name: array[row] for name, array in arrays.items()}) for row in range(start, stop)]
    return {name: np.stack([outputs[k][2] for outputs in per_row]) for k, (name, _, _) in enumerate(per_row[0])}


def segment_seconds() -> float:
    """How long one task may work on a resumable run before it hands over (well inside the soft limit)."""
    return max(5.0, settings.CELERY_TASK_SOFT_TIME_LIMIT * 0.75)


class ChunkedWork(ABC, Generic[R]):
    """What one kind of tracked run does with its rows, and what it stores at the end."""

    # Saves outputs in parts and hands over before the time limit (the model is a ResumableRun).
    resumable: ClassVar[bool] = False
    # The start of the error when `finish` fails.
    finish_failed: ClassVar[str] = "The outputs could not be saved"

    def __init__(self, claim: Claim[R]) -> None:
        self.claim = claim
        self.run: R = claim.run
        self.step = 1

    def start(self) -> None:
        """Load what the chunks need (a model, the inputs) and set `step`; raising fails the run."""

    @abstractmethod
    def chunk(self, start: int, stop: int) -> Outputs:
        """Process rows start..stop; returns the outputs to keep (rows first). Raising fails the run."""

    def chunk_done(self, rows: int, began: float, ok: bool) -> None:
        """Observe one chunk of `rows` rows that started at `began` (time.perf_counter)."""

    @abstractmethod
    def finish(self, outputs: Outputs) -> dict[str, Any]:
        """Store the result of all rows' outputs; returns the fields to save with the success."""

    def discard(self, fields: dict[str, Any]) -> None:
        """Undo what `finish` wrote when the run lost its claim before it could succeed."""

    def enqueue(self) -> None:
        """Send the run to a worker again (resumable runs, after handing over)."""
        raise NotImplementedError

    def time_limit_error(self, row: int) -> str:
        return f"The {self.run.noun} ran past the task time limit after row {row}."

    def close(self) -> None:
        """Release what `start` took (a model's sandboxed host); called however the run ended."""


class ModelWork(ChunkedWork[R]):
    """Chunks that are forwards of a model version over the run's stored input arrays."""

    @abstractmethod
    def model_source(self) -> tuple[Any, str, int]:
        """The version id to load, the stored `.npz` of inputs and the rows per forward."""

    def start(self) -> None:
        version_id, input_path, chunk_size = self.model_source()
        # In a sandboxed host of this run's own (inference.sandbox), unless the sandbox is off.
        self.loaded: LoadedModel | SandboxedModel = model_open(version_id)
        self.arrays = self.inputs(npz_load(input_path))
        self.batched = batched_layout(self.loaded.signature)
        self.step = chunk_size if self.batched and self.loaded.batching else 1

    def inputs(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs among the stored arrays (all of them unless a kind stores more)."""
        return arrays

    def chunk(self, start: int, stop: int) -> Outputs:
        return forward(self.loaded, self.arrays, start, stop, self.batched)

    def close(self) -> None:
        if hasattr(self, "loaded"):
            model_close(self.loaded)


def _joined(claim: Claim[Any]) -> Outputs:
    """The outputs of all rows, from the saved parts or (not resumable) from memory."""
    if claim.parts:
        loaded = [npz_load(path) for path in claim.parts]
        return {name: np.concatenate([part[name] for part in loaded]) for name in loaded[0]}
    return {name: np.concatenate(chunks) for name, chunks in claim.pending.items()}


def _hand_over(work: ChunkedWork[Any], rows: int) -> str:
    """Save, then leave the rest to a fresh task before this one reaches its time limit."""
    claim = work.claim
    if not claim.checkpoint(rows):
        return claim.stopped()
    with transaction.atomic():
        if not claim.requeue():
            return claim.stopped()
        transaction.on_commit(work.enqueue)
    logger.info("%s continues in a new task after %s rows", work.run, rows)
    return RunStatus.QUEUED


def _rows(work: ChunkedWork[Any]) -> str | None:
    """Run the remaining rows; a status when the run ended early, None when all rows are done."""
    claim, total = work.claim, work.run.total_rows
    start = work.run.resume_from
    clock = time.monotonic()
    deadline, last_progress, last_save = clock + segment_seconds(), clock, clock
    try:
        while start < total:
            stop = min(start + work.step, total)
            began = time.perf_counter()
            try:
                outputs = work.chunk(start, stop)
            except SoftTimeLimitExceeded:
                raise
            except RunStopped:
                return claim.stopped()
            except Exception as exc:
                work.chunk_done(stop - start, began, ok=False)
                if out_of_memory(exc):
                    return claim.out_of_memory(f"rows {start + 1} to {stop}: {exception_summary(exc)}")
                return claim.fail(f"Rows {start + 1} to {stop}: the model failed: {exception_summary(exc)}")
            work.chunk_done(stop - start, began, ok=True)
            claim.keep(outputs)
            start, now = stop, time.monotonic()
            if start >= total:
                break
            if work.resumable and now >= deadline:
                return _hand_over(work, start)
            if work.resumable and now - last_save >= CHECKPOINT_SECONDS:
                if not claim.checkpoint(start):
                    return claim.stopped()
                last_save = last_progress = now
            elif now - last_progress >= PROGRESS_SECONDS:
                if not claim.heartbeat(start):
                    return claim.stopped()
                last_progress = now
    except SoftTimeLimitExceeded:
        return claim.fail(work.time_limit_error(start))
    if work.resumable and not claim.checkpoint(total):
        return claim.stopped()
    return None


def work_run(model: type[R], run_id: Any, work_class: type[ChunkedWork[R]]) -> str:
    """Claim a run and do its work on this worker, chunk by chunk; returns the status it ends in."""
    claimed = run_claim(model, run_id)
    if isinstance(claimed, str):
        return claimed
    work = work_class(claimed)
    try:
        with claim_heartbeat(claimed):
            return _work(claimed, work)
    finally:
        work.close()


def _work(claimed: Claim[Any], work: ChunkedWork[Any]) -> str:
    try:
        work.start()
    except Exception as exc:  # ModelUnavailable, storage errors: the run cannot start; say why
        if out_of_memory(exc):
            return claimed.out_of_memory(f"loading: {exception_summary(exc)}")
        return claimed.fail(f"The {work.run.noun} could not start: {exception_summary(exc)}")
    try:
        ended = _rows(work)
        if ended is not None:
            return ended
        fields = work.finish(_joined(claimed))
    except SoftTimeLimitExceeded:
        return claimed.fail(work.time_limit_error(work.run.total_rows))
    except Exception as exc:  # a part or the result could not be saved, joined, scored or written
        logger.exception("%s: saving the outputs failed", work.run)
        return claimed.fail(f"{work.finish_failed}: {exception_summary(exc)}")
    if not claimed.succeed(**fields):
        work.discard(fields)
        return claimed.stopped()
    return RunStatus.SUCCEEDED
