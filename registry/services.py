"""Registry operations: models, versions, aliases and their audit trail.

Every change happens in one transaction and writes an AuditEvent beside it. Work that
must not run inside a transaction (storage I/O, enqueueing) happens before it or in
on_commit, so a failure never leaves a row without its file or a file without its row.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from core.request_id import current_request_id
from registry import signatures
from registry.artifacts import (
    ArtifactIntegrityError,
    archive_check,
    artifact_delete,
    artifact_fetch,
    artifact_store,
    sha256_of,
)
from registry.models import (
    ALIAS_NAME_RE,
    MODEL_NAME_RE,
    TAG_RE,
    AuditEvent,
    ModelAlias,
    ModelFormat,
    ModelVersion,
    RegisteredModel,
    Tag,
    VersionStatus,
    Visibility,
)
from registry.selectors import alias_get
from registry.uploads import too_large_message

logger = logging.getLogger(__name__)

# A worker that keeps dying while loading a version (a model that crashes the process)
# must not be retried for ever.
MAX_VALIDATION_ATTEMPTS = 3
MAX_TAGS = 20


def alias_move_authorize(actor: Any, model: RegisteredModel, names: list[str], *, approved: bool = False) -> None:
    """Who may move which alias is decided in registry.access_services (imported late: it imports us)."""
    from registry.access_services import alias_move_authorize as authorize

    authorize(actor, model, names, approved=approved)


# --- audit ------------------------------------------------------------------------------


def audit_record(
    actor: Any,
    action: str,
    *,
    model: RegisteredModel | None,
    object_type: str,
    object_repr: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit event (call inside the transaction that makes the change)."""
    return AuditEvent.objects.create(
        actor=actor if actor is not None and actor.pk else None,
        actor_name=getattr(actor, "username", "") or "system",
        action=action,
        model=model,
        model_name=model.name if model else "",
        object_type=object_type,
        object_repr=object_repr[:200],
        before=before,
        after=after,
        request_id=current_request_id(),
    )


# --- small parsers ------------------------------------------------------------------------


def tags_parse(raw: Any) -> list[str]:
    """Tags from a list or a comma-separated string; each checked."""
    if raw in (None, ""):
        return []
    if isinstance(raw, str):
        raw = [part for part in re.split(r"[,\s]+", raw) if part]
    if not isinstance(raw, list) or not all(isinstance(tag, str) for tag in raw):
        raise InvalidInput("tags must be a list of strings.", field="tags")
    tags = sorted({tag.strip() for tag in raw if tag.strip()})
    bad = [tag for tag in tags if not TAG_RE.match(tag)]
    if bad:
        raise InvalidInput(f"Invalid tag {bad[0]!r}: use letters, digits, '.', '_', ':' or '-' (max 50).", field="tags")
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"At most {MAX_TAGS} tags.", field="tags")
    return tags


def _tags_set(obj: RegisteredModel | ModelVersion, names: list[str]) -> None:
    obj.tags.set([Tag.objects.get_or_create(name=name)[0] for name in names])


def _model_name_check(name: Any) -> str:
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
        raise InvalidInput(
            f"Invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
            field="name",
        )
    return name


def alias_name_check(name: Any) -> str:
    """An alias name: lower-case, starts with a letter, at most 32 characters."""
    if not isinstance(name, str) or not ALIAS_NAME_RE.match(name):
        raise InvalidInput(
            f"Invalid alias name {name!r}: use 1-32 lower-case letters, digits, '_' or '-', starting with a letter.",
            field="name",
        )
    return name


# --- models -------------------------------------------------------------------------------


def model_create(
    *, actor: Any, name: str, description: str = "", tags: Any = None, visibility: str = Visibility.PRIVATE
) -> RegisteredModel:
    """Register a new, empty model owned by `actor` (409 when the name is taken)."""
    _model_name_check(name)
    tag_names = tags_parse(tags)
    if visibility not in Visibility.values:
        raise InvalidInput(f"visibility must be one of {', '.join(Visibility.values)}.", field="visibility")
    try:
        with transaction.atomic():
            model = RegisteredModel.objects.create(
                name=name, description=description, owner=actor, visibility=visibility
            )
            _tags_set(model, tag_names)
            audit_record(
                actor,
                "model.create",
                model=model,
                object_type="model",
                object_repr=name,
                after={"visibility": visibility, "tags": tag_names},
            )
    except IntegrityError:
        raise Conflict(f"A model named {name!r} already exists.", field="name") from None
    return model


def model_update(
    *,
    actor: Any,
    model: RegisteredModel,
    description: str | None = None,
    tags: Any = None,
    visibility: str | None = None,
) -> RegisteredModel:
    """Change a model's description, tags or visibility."""
    before = {
        "description": model.description,
        "visibility": model.visibility,
        "tags": sorted(model.tags.values_list("name", flat=True)),
    }
    with transaction.atomic():
        if description is not None:
            model.description = description
        if visibility is not None:
            if visibility not in Visibility.values:
                raise InvalidInput(f"visibility must be one of {', '.join(Visibility.values)}.", field="visibility")
            model.visibility = visibility
        model.save()
        if tags is not None:
            _tags_set(model, tags_parse(tags))
        after = {
            "description": model.description,
            "visibility": model.visibility,
            "tags": sorted(model.tags.values_list("name", flat=True)),
        }
        changed = {key: before[key] for key in before if before[key] != after[key]}
        if changed:
            audit_record(
                actor,
                "model.update",
                model=model,
                object_type="model",
                object_repr=model.name,
                before=changed,
                after={key: after[key] for key in changed},
            )
    return model


def model_delete(*, actor: Any, model: RegisteredModel) -> None:
    """Delete a model with its versions, aliases and evaluation data; their files go once the delete commits."""
    paths = list(model.versions.values_list("artifact", flat=True))
    paths += list(model.eval_datasets.values_list("path", flat=True))  # monitoring's stored datasets
    with transaction.atomic():
        audit_record(
            actor,
            "model.delete",
            model=None,
            object_type="model",
            object_repr=model.name,
            before={"versions": model.versions.count(), "owner": model.owner.username},
        )
        # Earlier events keep the name but lose the link, which the delete would null anyway.
        model.delete()

        def delete_artifacts() -> None:
            for path in paths:
                artifact_delete(path)

        transaction.on_commit(delete_artifacts)


# --- versions -----------------------------------------------------------------------------


def version_upload(
    *,
    actor: Any,
    model: RegisteredModel,
    file: File,
    filename: str = "",
    format: str | None = None,
    signature: Any = None,
    example_input: Any = None,
    labels: Any = None,
    description: str = "",
    tags: Any = None,
    parent_version: int | None = None,
    enqueue: bool = True,
) -> ModelVersion:
    """Store an uploaded artifact as the model's next version and queue its validation.

    `enqueue=False` leaves the version pending for a caller that validates it itself.

    Everything that can be checked without loading the model is checked before a row or
    a file is written: size, archive structure and format, signature, example, labels.
    """
    size = file.size or 0
    if size == 0:
        raise InvalidInput("The uploaded file is empty.", field="file")
    if size > settings.MODEL_UPLOAD_MAX_BYTES:
        raise PayloadTooLarge(too_large_message(settings.MODEL_UPLOAD_MAX_BYTES))
    detected = archive_check(file)
    if format:
        if format not in ModelFormat.values:
            raise InvalidInput(f"format must be one of {', '.join(ModelFormat.values)}.", field="format")
        if format != detected:
            raise InvalidInput(
                f"The file was declared as {format} but it is a {detected} archive; upload it with format={detected}.",
                field="format",
            )
    example = signatures.example_parse(example_input) if example_input not in (None, "", {}) else None
    if signature not in (None, "", {}):
        parsed_signature = signatures.signature_parse(signature)
        source = "declared"
        if example:
            signatures.example_matches_signature(example, parsed_signature)
    elif example:
        parsed_signature = signatures.signature_from_example(example)
        source = "example"
    else:
        raise InvalidInput(
            "Give a signature (inputs with name, datatype and shape) or an example_input to infer it from.",
            field="signature",
        )
    label_list = signatures.labels_parse(labels)
    tag_names = tags_parse(tags)
    parent = None
    if parent_version is not None:
        parent = model.versions.filter(version=parent_version).first()
        if parent is None:
            raise InvalidInput(
                f"Parent version {parent_version} does not exist in model {model.name!r}.", field="parent"
            )
    digest = getattr(file, "sha256", None)
    if digest is None:
        file.seek(0)
        digest = sha256_of(file)

    path = artifact_store(model.pk, filename or getattr(file, "name", "") or "model", file)
    try:
        with transaction.atomic():
            # The row lock serialises number allocation per model (SQLite: the IMMEDIATE
            # transaction mode gives the same guarantee for the whole database).
            locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
            locked.last_version_number += 1
            locked.save(update_fields=["last_version_number", "updated_at"])
            version = ModelVersion.objects.create(
                model=locked,
                version=locked.last_version_number,
                description=description,
                format=detected,
                artifact=path,
                original_filename=(filename or "")[:255],
                sha256=digest,
                size_bytes=size,
                signature=parsed_signature,
                signature_source=source,
                example_input=example,
                labels=label_list,
                parent=parent,
                created_by=actor,
            )
            _tags_set(version, tag_names)
            audit_record(
                actor,
                "version.upload",
                model=locked,
                object_type="version",
                object_repr=f"v{version.version}",
                after={"version": version.version, "sha256": digest, "size_bytes": size, "format": detected},
            )
            if enqueue:
                transaction.on_commit(lambda: version_validation_enqueue(version.pk))
    except BaseException:
        artifact_delete(path)
        raise
    logger.info("uploaded %s (%s bytes, %s)", version, size, detected)
    return version


def version_validation_enqueue(version_id: int) -> None:
    """Send the validation job; if the broker cannot take it, fail the version with the reason."""
    from registry.tasks import version_validate

    try:
        version_validate.delay(version_id)
    except Exception as exc:  # kombu raises OperationalError and friends
        logger.exception("could not enqueue validation of version %s", version_id)
        ModelVersion.objects.filter(pk=version_id, status=VersionStatus.PENDING).update(
            status=VersionStatus.FAILED,
            status_reason=f"The validation job could not be queued (broker unavailable: {exc}). Use 'Validate again'.",
        )


def version_revalidate(*, actor: Any, version: ModelVersion) -> ModelVersion:
    """Queue validation again for a failed (or stuck pending) version."""
    if version.status not in (VersionStatus.FAILED, VersionStatus.PENDING):
        raise Conflict(
            f"Version {version.version} is {version.status}; only failed or pending versions are validated again."
        )
    with transaction.atomic():
        ModelVersion.objects.filter(pk=version.pk).update(
            status=VersionStatus.PENDING, status_reason="", validation_attempts=0, updated_at=timezone.now()
        )
        audit_record(
            actor, "version.revalidate", model=version.model, object_type="version", object_repr=f"v{version.version}"
        )
        transaction.on_commit(lambda: version_validation_enqueue(version.pk))
    version.refresh_from_db()
    return version


def version_validate(version_id: int) -> str:
    """Load the artifact on this worker, run it, and record the outcome; returns the status.

    Claiming the row (pending/validating → validating) is its own short transaction so
    the UI shows progress; redelivery after a worker died counts as another attempt.
    """
    from inference.services import ProbeFailed, model_probe

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
        path = artifact_fetch(version.artifact, version.sha256)
        result = model_probe(path, version.format, version.signature, version.example_input, version.labels)
    except (ProbeFailed, ArtifactIntegrityError) as exc:
        return _validation_finish(version, VersionStatus.FAILED, str(exc))
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


def version_artifact_path(version: ModelVersion) -> Path:
    """A local, sha256-verified copy of a version's artifact (for workers)."""
    return artifact_fetch(version.artifact, version.sha256)


def version_update(
    *,
    actor: Any,
    version: ModelVersion,
    description: str | None = None,
    tags: Any = None,
    max_batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
) -> ModelVersion:
    """Change a version's description, tags or batching (the artifact and signature are immutable)."""

    def snapshot() -> dict[str, Any]:
        return {"description": version.description, "tags": sorted(version.tags.values_list("name", flat=True)),
                "max_batch_size": version.max_batch_size, "max_batch_delay_ms": version.max_batch_delay_ms}  # fmt: skip

    if max_batch_size is not None and not 1 <= max_batch_size <= 4096:
        raise InvalidInput("max_batch_size must be between 1 and 4096.", field="max_batch_size")
    if max_batch_delay_ms is not None and not 0 <= max_batch_delay_ms <= 1000:
        raise InvalidInput("max_batch_delay_ms must be between 0 and 1000.", field="max_batch_delay_ms")
    with transaction.atomic():
        before = snapshot()
        fields = {
            "description": description,
            "max_batch_size": max_batch_size,
            "max_batch_delay_ms": max_batch_delay_ms,
        }
        changed = [name for name, value in fields.items() if value is not None]
        for name in changed:
            setattr(version, name, fields[name])
        if changed:
            version.save(update_fields=[*changed, "updated_at"])
        if tags is not None:
            _tags_set(version, tags_parse(tags))
        after = snapshot()
        if before != after:
            audit_record(actor, "version.update", model=version.model, object_type="version",
                         object_repr=f"v{version.version}", before=before, after=after)  # fmt: skip
    return version


def _held_aliases_authorize(actor: Any, version: ModelVersion) -> None:
    # Checked before the transaction too, so that a refusal's audit event is not rolled back.
    alias_move_authorize(actor, version.model, list(version.aliases.values_list("name", flat=True)), approved=True)


def _aliases_drop(actor: Any, version: ModelVersion, reason: str) -> list[str]:
    names = []
    held = list(version.aliases.select_for_update())
    alias_move_authorize(actor, version.model, [alias.name for alias in held], approved=True)
    for alias in held:
        names.append(alias.name)
        audit_record(
            actor,
            "alias.delete",
            model=version.model,
            object_type="alias",
            object_repr=alias.name,
            before={"version": version.version},
            after={"version": None, "reason": reason},
        )
        alias.delete()
    return names


def version_archive(*, actor: Any, version: ModelVersion) -> ModelVersion:
    """Archive a version: it keeps its artifact and history but loses its aliases."""
    _held_aliases_authorize(actor, version)
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version.pk)
        if version.status == VersionStatus.ARCHIVED:
            return version
        if version.status in (VersionStatus.PENDING, VersionStatus.VALIDATING):
            raise Conflict(f"Version {version.version} is still {version.status}; archive it once validation ends.")
        dropped = _aliases_drop(actor, version, "archived")
        before = version.status
        version.status = VersionStatus.ARCHIVED
        version.save(update_fields=["status", "updated_at"])
        audit_record(
            actor,
            "version.archive",
            model=version.model,
            object_type="version",
            object_repr=f"v{version.version}",
            before={"status": before, "aliases": dropped},
            after={"status": VersionStatus.ARCHIVED},
        )
    return version


def version_restore(*, actor: Any, version: ModelVersion) -> ModelVersion:
    """Bring an archived version back: validated again before it can hold an alias."""
    if version.status != VersionStatus.ARCHIVED:
        raise Conflict(f"Version {version.version} is {version.status}, not archived.")
    with transaction.atomic():
        ModelVersion.objects.filter(pk=version.pk).update(
            status=VersionStatus.PENDING, status_reason="", validation_attempts=0, updated_at=timezone.now()
        )
        audit_record(
            actor,
            "version.restore",
            model=version.model,
            object_type="version",
            object_repr=f"v{version.version}",
            before={"status": VersionStatus.ARCHIVED},
            after={"status": VersionStatus.PENDING},
        )
        transaction.on_commit(lambda: version_validation_enqueue(version.pk))
    version.refresh_from_db()
    return version


def version_delete(*, actor: Any, version: ModelVersion) -> None:
    """Delete a version, its aliases and (after commit) its artifact; the number is not reused."""
    path = version.artifact
    _held_aliases_authorize(actor, version)
    with transaction.atomic():
        dropped = _aliases_drop(actor, version, "version deleted")
        audit_record(
            actor,
            "version.delete",
            model=version.model,
            object_type="version",
            object_repr=f"v{version.version}",
            before={"version": version.version, "sha256": version.sha256, "aliases": dropped},
        )
        version.delete()
        transaction.on_commit(lambda: artifact_delete(path))


# --- aliases ------------------------------------------------------------------------------


def alias_set(
    *,
    actor: Any,
    model: RegisteredModel,
    name: str,
    version_number: int,
    action: str = "alias.move",
    approved: bool = False,
    force: bool = False,
) -> ModelAlias:
    """Point an alias at a ready version (creating the alias if needed), in one transaction.

    Protected aliases need promote rights, and an approved request where the model asks
    for one (`approved`: called by registry.access_services on approval). A model's
    promotion gate (monitoring) may then refuse the move; `force` overrides it for a user
    with that right, and the override is audited.
    """
    from monitoring.services import gate_check, gate_override_record

    alias_name_check(name)
    alias_move_authorize(actor, model, [name], approved=approved)
    forced = gate_check(actor=actor, model=model, alias=name, version_number=version_number, force=force, action=action)
    with transaction.atomic():
        # Lock the model row: moves of one model's aliases are serialised, so the
        # "previous holder" written to the audit trail is always the real one.
        locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
        version = locked.versions.filter(version=version_number).first()
        if version is None:
            raise NotFound(f"Model {model.name!r} has no version {version_number}.", field="version")
        if version.status != VersionStatus.READY:
            raise Conflict(
                f"Version {version_number} is {version.status}; only ready versions can hold an alias.",
                field="version",
            )
        alias = ModelAlias.objects.select_related("version").filter(model=locked, name=name).first()
        previous = alias.version.version if alias else None
        if alias is None:
            alias = ModelAlias.objects.create(model=locked, name=name, version=version, updated_by=actor)
        elif previous != version_number:
            alias.version = version
            alias.updated_by = actor
            alias.save(update_fields=["version", "updated_by", "updated_at"])
        if previous != version_number:
            audit_record(
                actor,
                action,
                model=locked,
                object_type="alias",
                object_repr=name,
                before={"version": previous},
                after={"version": version_number},
            )
            if forced is not None:
                gate_override_record(actor, locked, name, forced)
    return alias


def alias_delete(*, actor: Any, model: RegisteredModel, name: str) -> None:
    """Remove an alias from a model."""
    alias_move_authorize(actor, model, [name], approved=True)
    with transaction.atomic():
        RegisteredModel.objects.select_for_update().get(pk=model.pk)
        alias = alias_get(model, name)
        audit_record(
            actor,
            "alias.delete",
            model=model,
            object_type="alias",
            object_repr=name,
            before={"version": alias.version.version},
            after={"version": None},
        )
        alias.delete()


def alias_previous_version(model: RegisteredModel, name: str) -> int | None:
    """The version that held the alias before its current holder, from the audit trail."""
    current = model.aliases.filter(name=name).values_list("version__version", flat=True).first()
    if current is None:
        return None
    event = (
        AuditEvent.objects.filter(model=model, object_type="alias", object_repr=name, after__version=current)
        .order_by("-created_at", "-id")
        .first()
    )
    return event.before.get("version") if event and event.before else None


def alias_rollback(*, actor: Any, model: RegisteredModel, name: str) -> ModelAlias:
    """Move the alias back to the version it pointed at before its last move."""
    alias_get(model, name)
    previous = alias_previous_version(model, name)
    if previous is None:
        raise Conflict(f"Alias {name!r} has no previous version to roll back to.")
    target = model.versions.filter(version=previous).first()
    if target is None or target.status != VersionStatus.READY:
        state = target.status if target else "deleted"
        raise Conflict(f"Cannot roll back {name!r} to version {previous}: that version is {state}.")
    return alias_set(actor=actor, model=model, name=name, version_number=previous, action="alias.rollback")
