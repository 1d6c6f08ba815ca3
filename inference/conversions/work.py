"""A conversion on a worker: the tracked run's steps, each a request to the run's own sandboxed host.

The host exports, quantises, times and compares and validates the child; this trusted side
checks the comparison against the target's tolerance and, at the very end, stores the child's
bytes as a new, ready version of the same model (its parent, derivation and recipe recorded).
A run that fails, is cancelled or loses its worker before that leaves nothing behind.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from inference import wire
from inference.cache import ModelUnavailable
from inference.conversions import recipes
from inference.models import ConversionRun, RunStatus
from inference.runs.lifecycle import out_of_memory, run_enqueue, run_kind_register
from inference.runs.loop import ChunkedWork, Outputs, RunStopped, work_run
from inference.sandbox.client import TaskHost, remote_exception, sandbox_enabled
from inference.sandbox.hosted import Tasks
from inference.services import ProbeResult, exception_summary, model_path
from registry import hooks
from registry.artifacts import artifact_delete, artifact_fetch
from registry.models import ModelVersion, VersionStatus
from registry.services.versions import version_upload

logger = logging.getLogger(__name__)


class InProcessHost:
    """The host's requests answered in this process (MODEL_SANDBOX=off, the operator's opt-out)."""

    def __init__(self) -> None:
        self.tasks = Tasks()

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        reply = self.tasks.handle(request)
        if not reply.get("ok"):
            raise remote_exception(str(reply.get("kind")), str(reply.get("error")))
        return reply

    def close(self) -> None:
        if self.tasks.conversion is not None:
            self.tasks.conversion.close()


def conversion_queue(run: ConversionRun) -> str:
    """fp16 runs go to the GPU queue; the others to the source model's serving queue."""
    if run.target == recipes.FP16 and settings.CONVERSION_GPU_QUEUE:
        return str(settings.CONVERSION_GPU_QUEUE)
    if run.version is not None:
        return run.version.model.serving_queue
    return str(settings.CELERY_TASK_DEFAULT_QUEUE)


def conversion_enqueue(run_id: Any) -> None:
    """Send a queued conversion to its queue (the sweep sends it again if the broker cannot take it)."""
    run = ConversionRun.objects.select_related("version__model").filter(pk=run_id, status=RunStatus.QUEUED).first()
    if run is not None:
        run_enqueue(run, conversion_run_task, conversion_queue(run))


run_kind_register(ConversionRun, conversion_enqueue)


class CancelWatch(threading.Thread):
    """Stops a conversion's sandboxed host as soon as a cancel is asked for: a step (an export of a
    large model) may take minutes, and the loop only looks between steps."""

    def __init__(self, run_id: Any, host: TaskHost | InProcessHost) -> None:
        super().__init__(name=f"maas-conversion-cancel-{run_id}", daemon=True)
        self.run_id, self.host = run_id, host
        self.stopping, self.cancelled = threading.Event(), threading.Event()

    def run(self) -> None:
        if not isinstance(self.host, TaskHost):
            return  # in this process (sandbox off) there is nothing to stop but the process itself
        try:
            while not self.stopping.wait(settings.RUNS_HEARTBEAT_SECONDS):
                try:
                    asked = ConversionRun.objects.filter(pk=self.run_id, cancel_requested=True).exists()
                except DatabaseError:
                    continue  # the database is away: the next look tries again
                if asked:
                    self.cancelled.set()
                    self.host.close()
                    return
        finally:
            connections.close_all()  # this thread's own connections


class ConversionWork(ChunkedWork[ConversionRun]):
    """A conversion's "rows" are its recipe's steps; the child is stored by `finish`."""

    finish_failed = "The converted version could not be stored"

    def start(self) -> None:
        run = self.run
        source = None
        if run.version_id is not None:
            source = ModelVersion.objects.select_related("model").filter(pk=run.version_id).first()
        if source is None:
            raise ModelUnavailable("the source version was deleted")
        if source.status != VersionStatus.READY:
            raise ModelUnavailable(f"{source} is {source.status}; only ready versions are converted")
        self.source = source
        self.steps = recipes.STEPS[run.target]
        self.record: dict[str, Any] = {
            "target": run.target,
            "options": run.options,
            "tolerance": settings.CONVERSION_TOLERANCES[run.target],
        }
        self.artifact: dict[str, Any] = {}
        path = model_path(artifact_fetch(source.artifact, source.sha256), source.format, source.sha256)
        self.path = path
        self.host: TaskHost | InProcessHost = TaskHost([path]) if sandbox_enabled() else InProcessHost()
        self.watch = CancelWatch(run.pk, self.host)
        self.watch.start()

    def call(self, step: str, **request: Any) -> dict[str, Any]:
        return self.host.call({"op": "convert", "step": step, **request})

    def chunk(self, start: int, stop: int) -> Outputs:
        name = self.steps[start]
        # A cancel is seen before every step, not only every PROGRESS_SECONDS.
        if start and not self.claim.heartbeat(start):
            raise RunStopped
        try:
            getattr(self, f"step_{name}")()
        except RunStopped:
            raise
        except Exception as exc:
            if self.watch.cancelled.is_set():  # the host was stopped for a cancel: not a failure
                raise RunStopped from None
            if out_of_memory(exc):
                raise
            message = str(exc) if isinstance(exc, recipes.ConversionFailed) else exception_summary(exc)
            self.fail(f"Step {start + 1} of {len(self.steps)} ({name}): {message}")
        return {}

    def fail(self, message: str) -> None:
        """Fail the run with what it measured so far, and stop the loop."""
        self.claim.owned().update(result=self.record)
        self.claim.fail(message)
        raise RunStopped

    # --- steps ------------------------------------------------------------------------------

    def step_export(self) -> None:
        source, run = self.source, self.run
        # The host loads the parent and times it on the example before the export touches it.
        self.call("start", path=str(self.path), format=source.format, signature=source.signature,
                  example=source.example_input, target=run.target, options=run.options,
                  repeats=settings.CONVERSION_LATENCY_REPEATS)  # fmt: skip
        reply = self.call("export")
        self.record.update(exporter=reply["exporter"], exported_bytes=reply["bytes"])

    def step_quantize(self) -> None:
        self.record["quantized_bytes"] = self.call("quantize")["bytes"]

    def step_compare(self) -> None:
        reply = self.call("compare")
        parent, child = wire.tensors_unpack(reply["parent"]), wire.tensors_unpack(reply["child"])
        tolerance = settings.CONVERSION_TOLERANCES[self.run.target]
        comparison = recipes.outputs_compare(parent, child, tolerance["atol"], tolerance["rtol"])
        self.record.update(
            comparison=comparison.as_json(),
            latency_ms=reply["latency_ms"],
            memory_bytes=reply["memory_bytes"],
            provider=reply["provider"],
        )
        if not comparison.within:
            self.fail(comparison.message())

    def step_validate(self) -> None:
        self.probe = ProbeResult(
            **self.call("probe", labels=self.source.labels, example=self.source.example_input)["result"]
        )

    def step_store(self) -> None:
        self.artifact = self.call("artifact")
        self.record.update(
            tools=self.artifact["tools"],
            sizes={"parent": self.source.size_bytes, "child": len(self.artifact["data"])},
            sha256={"parent": self.source.sha256, "child": self.artifact["sha256"]},
        )

    # --- the child ------------------------------------------------------------------------

    def finish(self, outputs: Outputs) -> dict[str, Any]:
        run, source = self.run, self.source
        data: bytes = self.artifact["data"]
        name = f"{source.model.name}-v{source.version}-{run.target}.onnx"
        recipe = {
            "conversion": str(run.pk),
            "conversion_target": run.target,
            "parent_sha256": source.sha256,
            "sha256": self.artifact["sha256"],
            **{f"{tool}_version": version for tool, version in self.artifact["tools"].items()},
        }
        if run.options:
            recipe["conversion_options"] = ", ".join(f"{k}={v}" for k, v in sorted(run.options.items()))
        derivation = recipes.derivation_text(run.target, run.options)
        with transaction.atomic():
            child = version_upload(
                actor=run.created_by,
                model=source.model,
                file=ContentFile(data, name=name),
                filename=name,
                format="onnx",
                signature=source.signature,
                example_input={"inputs": source.example_input} if source.example_input else None,
                labels=list(source.labels or []) or None,
                description=f"v{source.version} {derivation}.",
                parent_version=source.version,
                derivation=derivation,
                source=recipe,
                enqueue=False,
            )
            # Validated in this run, by the same probe as an upload's: written ready with its figures.
            validation = {**self.probe.as_json(), "conversion": str(run.pk)}
            ModelVersion.objects.filter(pk=child.pk).update(
                status=VersionStatus.READY,
                validation=validation,
                validation_attempts=1,
                signature={"inputs": source.signature["inputs"], "outputs": self.probe.outputs},
                validation_started_at=timezone.now(),
                validated_at=timezone.now(),
                max_batch_size=source.max_batch_size,
                max_batch_delay_ms=source.max_batch_delay_ms,
            )
        logger.info("%s stored %s (%s bytes)", run, child, len(data))
        return {"child": child, "result": self.record}

    def discard(self, fields: dict[str, Any]) -> None:
        child: ModelVersion = fields["child"]
        ModelVersion.objects.filter(pk=child.pk).delete()
        artifact_delete(child.artifact)

    def time_limit_error(self, row: int) -> str:
        step = self.steps[min(row, len(self.steps) - 1)]
        return f"The conversion ran past the task time limit in step {row + 1} ({step})."

    def close(self) -> None:
        if hasattr(self, "watch"):
            self.watch.stopping.set()
        if hasattr(self, "host"):
            self.host.close()


def conversion_execute(run_id: Any) -> str:
    """Run a conversion on this worker; on success, the registry's hook evaluates the child."""
    status = work_run(ConversionRun, run_id, ConversionWork)
    if status == RunStatus.SUCCEEDED:
        run = ConversionRun.objects.select_related("child", "created_by").get(pk=run_id)
        if run.child is not None:
            try:
                hooks.version_derived(run.child, run.created_by)
            except Exception:  # the comparison is extra: the conversion itself succeeded
                logger.exception("%s: starting the child's evaluations failed", run)
    return status


@shared_task(name="inference.conversions.conversion_run", acks_late=True, reject_on_worker_lost=True)
def conversion_run_task(run_id: str) -> str:
    """Run (or take over) a conversion on this worker; redelivered if the worker dies."""
    return conversion_execute(run_id)
