"""Celery entry points of batch jobs and of the tracked-run sweep, and what a job's chunk does.

A job is a resumable tracked run (inference.runs): the engine claims it, feeds its rows
to the model in chunks, saves outputs in parts (a redelivered run resumes after the last
saved part) and hands over to a fresh task before the time limit. What is particular to
a job is here: its metrics per chunk, and the result file it writes at the end.

A job on a text-generation version (its input stored as canonical JSON lines of requests,
see inference.completions) runs its prompts through a continuous-batching engine instead
of forward passes; its chunks are the rows whose completions are done, in order.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from typing import Any, cast

import numpy as np
from celery import shared_task
from django.conf import settings
from django.core.files import File

from inference import telemetry, text
from inference.cache import LoadedModel, ModelUnavailable
from inference.completions import CompletionRows, line_tokens, prompts_load
from inference.generation import Engine
from inference.models import BatchJob, DataFormat, JobStatus
from inference.runs.arrays import npz_save, paths_delete
from inference.runs.lifecycle import run_enqueue, run_kind_register, stale_expire_all
from inference.runs.loop import PROGRESS_SECONDS, ChunkedWork, ModelWork, Outputs, RunStopped, work_run
from inference.runtimes import TextRuntime
from inference.sandbox.client import SandboxedModel, model_close, model_open
from registry.artifacts import artifact_storage

logger = logging.getLogger(__name__)

# The stored input of a generation job (canonical JSON lines of requests); others store `.npz`.
PROMPTS_SUFFIX = ".jsonl"


@shared_task(name="inference.tasks.batch_job_run", acks_late=True, reject_on_worker_lost=True)
def batch_job_run(job_id: str) -> str:
    """Run (or resume) a batch job on this worker; redelivered if the worker dies."""
    return job_run(job_id)


@shared_task(name="inference.tasks.runs_expire_stale")
def runs_expire_stale() -> dict[str, int]:
    """Fail every kind of tracked run (jobs, evaluations, ...) whose worker is gone; run by Celery beat."""
    return stale_expire_all()


def job_enqueue(job_id: Any) -> None:
    """Send a queued job to its model's queue; if the broker cannot take it, fail the job saying so."""
    job = BatchJob.objects.select_related("version__model").filter(pk=job_id, status=JobStatus.QUEUED).first()
    if job is None:
        return
    queue = job.version.model.serving_queue if job.version else settings.CELERY_TASK_DEFAULT_QUEUE
    run_enqueue(job, batch_job_run, queue)


run_kind_register(BatchJob, job_enqueue)


def _version_id(job: BatchJob) -> int:
    if job.version_id is None:
        raise ModelUnavailable("The model version was deleted after the job was submitted.")
    return job.version_id


class JobWork(ModelWork[BatchJob]):
    """A job's chunks are forwards of its version; its result is one file in the job's format."""

    resumable = True
    tokens = 0  # the tokens the last chunk read (text models)

    def model_source(self) -> tuple[Any, str, int]:
        version_id = _version_id(self.run)
        # The version may have been deleted since the claim (the job keeps its name): loading says so.
        self.labels = list(self.run.version.labels or []) if self.run.version is not None else []
        return version_id, self.run.input_path, self.run.chunk_size

    def chunk(self, start: int, stop: int) -> Outputs:
        outputs = super().chunk(start, stop)
        # A text model's chunk is metered like a prediction: the tokens it read, for the job's owner.
        self.tokens = text.usage_tokens(outputs)
        return outputs

    def chunk_done(self, rows: int, began: float, ok: bool) -> None:
        telemetry.job_chunk(self.run, rows, began, ok=ok, prompt_tokens=self.tokens if ok else 0)

    def finish(self, outputs: Outputs) -> dict[str, Any]:
        return {"result_path": self._result_store(outputs)}

    def discard(self, fields: dict[str, Any]) -> None:
        paths_delete([fields["result_path"]])

    def enqueue(self) -> None:
        job_enqueue(self.run.pk)

    def time_limit_error(self, row: int) -> str:
        return f"A chunk after row {row} ran past the task time limit; use a smaller chunk_size."

    def _result_store(self, outputs: Outputs) -> str:
        """Write the result in the job's format (with a label per row when the version names its
        classes); returns its storage path."""
        job = self.run
        first = next(iter(outputs.values()))
        labels = None
        if self.labels and "label" not in outputs and first.ndim == 2 and first.shape[1] == len(self.labels):
            labels = np.asarray(self.labels)[first.argmax(axis=1)]
        name = f"{job.storage_prefix}/result.{job.result_format}"
        if job.result_format == DataFormat.NPZ:
            return npz_save(name, {**outputs, **({"label": labels} if labels is not None else {})})
        with tempfile.TemporaryFile() as tmp:
            for row in range(job.total_rows):
                line = {key: array[row].tolist() for key, array in outputs.items()}
                if labels is not None:
                    line["label"] = str(labels[row])
                tmp.write(json.dumps(line).encode() + b"\n")
            tmp.seek(0)
            return artifact_storage().save(name, File(tmp, name="result.jsonl"))


class CompletionJobWork(ChunkedWork[BatchJob]):
    """A generation job: its prompts run through one engine; a chunk is the next rows' result lines."""

    resumable = True

    def start(self) -> None:
        job = self.run
        self.loaded: LoadedModel | SandboxedModel = model_open(_version_id(job))
        if not self.loaded.generative:
            raise ModelUnavailable(f"{job.model_name} v{job.version_number} is not a text-generation model.")
        with artifact_storage().open(job.input_path, "rb") as stream:
            requests = prompts_load(stream)
        options: dict[str, Any] = {
            "max_sequences": settings.GENERATION_MAX_SEQUENCES,
            "max_tokens": settings.GENERATION_MAX_CACHE_TOKENS,
            "max_waiting": settings.GENERATION_MAX_SEQUENCES,
            "prefill_tokens": settings.GENERATION_PREFILL_TOKENS,
        }
        self.completions: CompletionRows | RemoteRows
        if isinstance(self.loaded, SandboxedModel):
            self.loaded.generation_start(requests, job.resume_from, options)
            self.completions = RemoteRows(self.loaded)
        else:
            runtime = cast(TextRuntime, self.loaded.runtime)
            engine = Engine(runtime.module, runtime.tokenizer, **options)
            self.completions = CompletionRows(engine, requests, first=job.resume_from, lock=self.loaded.lock)
        self.step = job.chunk_size
        self.tokens = (0, 0)
        # What this task generated, and since when: its throughput, logged at the end.
        self.generated, self.began = 0, time.perf_counter()

    def close(self) -> None:
        if hasattr(self, "loaded"):
            model_close(self.loaded)

    def chunk(self, start: int, stop: int) -> Outputs:
        # A cancel is seen between two decoding steps, not only between chunks: a chunk may take long.
        lines = self.completions.rows(start, stop, alive=self.claim.heartbeat, every=PROGRESS_SECONDS)
        self.tokens = line_tokens(lines)
        self.generated += self.tokens[1]
        return {"line": np.array([json.dumps(line, ensure_ascii=False) for line in lines])}

    def chunk_done(self, rows: int, began: float, ok: bool) -> None:
        prompt, completion = self.tokens if ok else (0, 0)
        telemetry.job_chunk(self.run, rows, began, ok=ok, prompt_tokens=prompt, completion_tokens=completion)

    def finish(self, outputs: Outputs) -> dict[str, Any]:
        seconds = time.perf_counter() - self.began
        logger.info("%s: %s completion tokens in %.2fs (%.0f tokens/s, %s engine steps)", self.run, self.generated,
                    seconds, self.generated / max(seconds, 1e-6), self.completions.steps)  # fmt: skip
        name = f"{self.run.storage_prefix}/result.{DataFormat.JSONL}"
        with tempfile.TemporaryFile() as tmp:
            for line in outputs["line"].tolist():
                tmp.write(line.encode() + b"\n")
            tmp.seek(0)
            return {"result_path": artifact_storage().save(name, File(tmp, name="result.jsonl"))}

    def discard(self, fields: dict[str, Any]) -> None:
        paths_delete([fields["result_path"]])

    def enqueue(self) -> None:
        job_enqueue(self.run.pk)

    def time_limit_error(self, row: int) -> str:
        return f"Generating the rows after row {row} ran past the task time limit; use a smaller chunk_size."


class RemoteRows:
    """CompletionRows' `rows` over a sandboxed host, which generates for at most `every` seconds per call."""

    def __init__(self, model: SandboxedModel) -> None:
        self.model = model
        self.steps = 0

    def rows(self, start: int, stop: int, alive: Any = lambda: True, every: float = 0.5) -> list[dict[str, Any]]:
        """The result lines of rows start..stop; RunStopped once `alive()` says no between two calls."""
        while True:
            reply = self.model.host.call({"op": "rows", "start": start, "stop": stop, "budget": every})
            self.steps = int(reply["steps"])
            if reply["lines"] is not None:
                return list(reply["lines"])
            if not alive():
                raise RunStopped


def job_run(job_id: str) -> str:
    """Run a job's rows through its model on this worker, chunk by chunk; returns the status it ends in."""
    input_path = BatchJob.objects.filter(pk=job_id).values_list("input_path", flat=True).first() or ""
    work = CompletionJobWork if input_path.endswith(PROMPTS_SUFFIX) else JobWork
    return work_run(BatchJob, job_id, work)
