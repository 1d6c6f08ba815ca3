"""Validation of an uploaded version on a worker: load the verified artifact, run it, record the figures."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from core.errors import InvalidInput
from inference.sandbox.client import probe
from inference.sandbox.memory import HostOutOfMemory
from inference.sandbox.spawn import SandboxError
from inference.services import ProbeFailed, model_path
from registry.artifacts import ArtifactIntegrityError, artifact_fetch
from registry.models import ModelVersion, VersionStatus

logger = logging.getLogger(__name__)

# A worker that keeps dying while loading a version (a model that crashes the process)
# must not be retried for ever.
MAX_VALIDATION_ATTEMPTS = 3


def version_validate(version_id: int) -> str:
    """Load the artifact on this worker, run it, and record the outcome; returns the status.

    Claiming the row (pending/validating → validating) is its own short transaction so
    the UI shows progress; redelivery after a worker died counts as another attempt.
    """
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().filter(pk=version_id).first()
        if version is None or version.status not in (VersionStatus.PENDING, VersionStatus.VALIDATING):
            return version.status if version else "missing"
        version.validation_attempts += 1
        if version.validation_attempts > MAX_VALIDATION_ATTEMPTS:
            version.status = VersionStatus.FAILED
            version.status_reason = (
                f"Validation was interrupted {MAX_VALIDATION_ATTEMPTS} times (the worker process died while loading "
                "or running the model); it was not retried again."
            )
            version.save(update_fields=["status", "status_reason", "validation_attempts", "updated_at"])
            return version.status
        version.status = VersionStatus.VALIDATING
        version.validation_started_at = timezone.now()
        version.save(update_fields=["status", "validation_attempts", "validation_started_at", "updated_at"])

    try:
        path = model_path(artifact_fetch(version.artifact, version.sha256), version.format, version.sha256)
        # In a sandboxed host that may read this artifact and nothing else (unless MODEL_SANDBOX=off).
        result = probe(path, version.format, version.signature, version.example_input, version.labels,
                       task=version.task)  # fmt: skip
    except (ProbeFailed, ArtifactIntegrityError, InvalidInput) as exc:
        return _validation_finish(version, VersionStatus.FAILED, str(exc))
    except (SandboxError, HostOutOfMemory) as exc:  # the host died (a model crashed it) or no sandbox
        return _validation_finish(version, VersionStatus.FAILED, f"Validation error: {exc}")
    except Exception as exc:  # anything else is still the model's fault, not the worker's
        logger.exception("validation of %s crashed", version)
        return _validation_finish(version, VersionStatus.FAILED, f"Validation error: {type(exc).__name__}: {exc}")
    signature = {"inputs": version.signature["inputs"], "outputs": result.outputs}
    return _validation_finish(version, VersionStatus.READY, "", signature=signature, validation=result.as_json())


def _validation_finish(version: ModelVersion, status: str, reason: str, **fields: Any) -> str:
    updated = ModelVersion.objects.filter(pk=version.pk, status=VersionStatus.VALIDATING).update(
        status=status, status_reason=reason[:2000], validated_at=timezone.now(), updated_at=timezone.now(), **fields
    )
    if updated:
        logger.info("validated %s: %s %s", version, status, reason)
    return status


@shared_task(name="inference.validation.version_validate", acks_late=True, reject_on_worker_lost=True)
def version_validate_task(version_id: int) -> str:
    """Validate an uploaded version on an inference worker."""
    return version_validate(version_id)


def validation_request(version_id: int) -> None:
    """Queue the validation of a version (registered as the registry's validation requester)."""
    version_validate_task.delay(version_id)
