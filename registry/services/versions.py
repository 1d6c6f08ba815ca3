"""Model versions: upload, validation requests, edits, archive, restore, delete."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from core import broker
from core.errors import Conflict, InvalidInput, PayloadTooLarge
from registry import hooks, signatures
from registry.access import Action, code_upload_require, model_require
from registry.artifacts import (
    ArtifactIntegrityError,
    VerifiedArtifact,
    archive_check,
    artifact_delete,
    artifact_fetch,
    artifact_filename,
    artifact_open_verified,
    artifact_store,
    artifact_unpacked,
    artifact_unpacked_cached,
    sha256_of,
)
from registry.audit import audit_record
from registry.huggingface import HuggingFaceArchive, hf_example
from registry.models import ModelFormat, ModelVersion, RegisteredModel, VersionStatus
from registry.onnx_graph import OnnxGraph
from registry.onnx_models import onnx_signature
from registry.services.access import alias_move_authorize
from registry.services.models import tags_parse, tags_set
from registry.sources import derivation_parse, source_parse
from registry.text_tasks import TextTask
from registry.uploads import too_large_message

logger = logging.getLogger(__name__)

# signature_source of a Hugging Face version: its signature follows from the task.
SIGNATURE_FROM_TASK = "task"
# signature_source of an ONNX version: its signature is read from the graph's inputs and outputs.
SIGNATURE_FROM_GRAPH = "graph"


def _held_aliases_authorize(actor: Any, version: ModelVersion) -> None:
    # Checked before the transaction too, so that a refusal's audit event is not rolled back.
    alias_move_authorize(actor, version.model, list(version.aliases.values_list("name", flat=True)), approved=True)


VERBS = {"archiving": "archive", "deleting": "delete"}


def _held_aliases_refuse(version: ModelVersion, names: list[str], doing: str) -> None:
    """Refuse (409) to take a version that serves under an alias offline without `force`."""
    if not names:
        return
    quoted = " and ".join(repr(name) for name in sorted(names))
    which = "it" if len(names) == 1 else "them"
    raise Conflict(
        f"Version {version.version} holds the alias {quoted}; {doing} it would take {which} offline. "
        f"Move {which} to another version first, or {VERBS[doing]} with force=true (audited) "
        f"to remove {which} as well.",
        field="force",
    )


def _aliases_drop(actor: Any, version: ModelVersion, reason: str, force: bool, doing: str) -> list[str]:
    names = []
    held = list(version.aliases.select_for_update())
    if not force:
        _held_aliases_refuse(version, [alias.name for alias in held], doing)
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
            after={"version": None, "reason": reason, "forced": True},
        )
        alias.delete()
    return names


def _tensor_signature(signature: Any, example: list[dict[str, Any]] | None) -> tuple[dict[str, Any], str]:
    """A tensor model's signature: declared (and the example checked against it) or inferred from the example."""
    if example and any(tensor["datatype"] == "BYTES" for tensor in example):
        raise InvalidInput(
            "BYTES (text) example inputs are for Hugging Face text models; a tensor model's example holds numbers.",
            field="example_input",
        )
    if signature not in (None, "", {}):
        parsed = signatures.signature_parse(signature)
        if example:
            signatures.example_matches_signature(example, parsed)
        return parsed, "declared"
    if example:
        return signatures.signature_from_example(example), "example"
    raise InvalidInput(
        "Give a signature (inputs with name, datatype and shape) or an example_input to infer it from.",
        field="signature",
    )


def _onnx_signature(
    graph: OnnxGraph, signature: Any, example: list[dict[str, Any]] | None
) -> tuple[dict[str, Any], str]:
    """An ONNX model's signature: read from its graph (a declared one may fix open dimensions)."""
    if example and any(tensor["datatype"] == "BYTES" for tensor in example):
        raise InvalidInput(
            "BYTES (text) example inputs are for Hugging Face text models; an ONNX model's example holds numbers.",
            field="example_input",
        )
    parsed = onnx_signature(graph, signature)
    if example:
        signatures.example_matches_signature(example, parsed)
    return parsed, SIGNATURE_FROM_GRAPH


def _huggingface_fields(
    archive: HuggingFaceArchive, signature: Any, example: list[dict[str, Any]] | None, labels: Any
) -> tuple[dict[str, Any], str, list[dict[str, Any]], list[str]]:
    """Signature, its source, example and labels of a Hugging Face model: all follow from the archive."""
    if signature not in (None, "", {}):
        raise InvalidInput(
            f"A Hugging Face model's signature follows from its task ({archive.task}: BYTES text in, the task's "
            "outputs out); leave signature out.",
            field="signature",
        )
    if labels not in (None, "", []):
        raise InvalidInput(
            "A Hugging Face model's labels come from config.json's id2label; leave labels out "
            "(set id2label in the config before save_pretrained to name them).",
            field="labels",
        )
    return archive.signature, SIGNATURE_FROM_TASK, hf_example(archive, example), list(archive.labels)


def version_upload(
    *,
    actor: Any,
    model: RegisteredModel,
    file: File,
    filename: str = "",
    format: str | None = None,
    task: str | None = None,
    signature: Any = None,
    example_input: Any = None,
    labels: Any = None,
    description: str = "",
    tags: Any = None,
    parent_version: int | None = None,
    derivation: str = "",
    source: Any = None,
    enqueue: bool = True,
    on_created: Callable[[ModelVersion], None] | None = None,
) -> ModelVersion:
    """Store an uploaded artifact as the model's next version and queue its validation.

    `enqueue=False` leaves the version pending for a caller that validates it itself.
    `on_created(version)` runs inside the transaction that creates the row (an
    Idempotency-Key's answer is stored with it: both are kept or neither).

    A Hugging Face archive (format "huggingface", a .zip or .tar.gz of a save_pretrained
    directory) takes a `task` (declared, or inferred from config.json's architectures);
    its signature, labels and default example follow from the archive, and an
    `example_input`, if given, is one BYTES input named "text".

    `source` is free-form string metadata about where the artifact came from (training
    run URL, git commit, dataset…; registry.sources), `derivation` how it came from
    `parent_version`.

    Everything that can be checked without loading the model is checked before a row or
    a file is written: size, archive structure and format, signature, example, labels.
    """
    model_require(actor, model, Action.UPLOAD)
    if enqueue:
        # Refused (503) before anything is stored while the broker cannot take the validation.
        broker.broker_check()
    size = file.size or 0
    if size == 0:
        raise InvalidInput("The uploaded file is empty.", field="file")
    if size > settings.MODEL_UPLOAD_MAX_BYTES:
        raise PayloadTooLarge(too_large_message(settings.MODEL_UPLOAD_MAX_BYTES))
    if format and format not in ModelFormat.values:
        raise InvalidInput(f"format must be one of {', '.join(ModelFormat.values)}.", field="format")
    if format:
        code_upload_require(actor, model, format)
    checked = archive_check(file, format=format, task=task)
    detected = checked.format
    code_upload_require(actor, model, detected)
    if format and format != detected:
        what = "an ONNX model" if detected == ModelFormat.ONNX else f"a {detected} archive"
        raise InvalidInput(
            f"The file was declared as {format} but it is {what}; upload it with format={detected}.",
            field="format",
        )
    example = signatures.example_parse(example_input) if example_input not in (None, "", {}) else None
    if checked.huggingface is not None:
        parsed_signature, signature_source, example, label_list = _huggingface_fields(
            checked.huggingface, signature, example, labels
        )
    else:
        if task:
            raise InvalidInput(
                f"task applies to Hugging Face models only; this file is a {detected} archive.", field="task"
            )
        if checked.onnx is not None:
            parsed_signature, signature_source = _onnx_signature(checked.onnx.graph, signature, example)
            description = description or checked.onnx.graph.doc_string
        else:
            parsed_signature, signature_source = _tensor_signature(signature, example)
        label_list = signatures.labels_parse(labels)
    tag_names = tags_parse(tags)
    source_fields = source_parse(source)
    derivation_text = derivation_parse(derivation, has_parent=parent_version is not None)
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

    stored_name = artifact_filename(filename or getattr(file, "name", "") or "model", model.name, checked)
    path = artifact_store(model.pk, stored_name, file)
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
                task=checked.huggingface.task if checked.huggingface is not None else "",
                artifact=path,
                original_filename=(filename or "")[:255],
                sha256=digest,
                size_bytes=size,
                signature=parsed_signature,
                signature_source=signature_source,
                example_input=example,
                labels=label_list,
                parent=parent,
                derivation=derivation_text,
                source=source_fields,
                created_by=actor,
            )
            tags_set(version, tag_names)
            audit_record(
                actor,
                "version.upload",
                model=locked,
                object_type="version",
                object_repr=f"v{version.version}",
                after={"version": version.version, "sha256": digest, "size_bytes": size, "format": detected}
                | ({"task": version.task} if version.task else {})
                | ({"parent": parent.version} if parent is not None else {})
                | ({"source": source_fields} if source_fields else {}),
            )
            if on_created is not None:
                on_created(version)
            if enqueue:
                transaction.on_commit(lambda: version_validation_enqueue(version.pk))
    except BaseException:
        artifact_delete(path)
        raise
    logger.info("uploaded %s (%s bytes, %s)", version, size, detected)
    return version


def version_validation_enqueue(version_id: int) -> None:
    """Send the validation job; if the broker cannot take it, fail the version with the reason."""
    try:
        hooks.validation_request(version_id)
    except Exception as exc:  # kombu raises OperationalError and friends
        logger.exception("could not enqueue validation of version %s", version_id)
        ModelVersion.objects.filter(pk=version_id, status=VersionStatus.PENDING).update(
            status=VersionStatus.FAILED,
            status_reason=f"The validation job could not be queued (broker unavailable: {exc}). Use 'Validate again'.",
        )


def version_revalidate(*, actor: Any, version: ModelVersion) -> ModelVersion:
    """Queue validation again for a failed (or stuck pending) version."""
    model_require(actor, version.model, Action.UPLOAD)
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


def version_artifact_path(version: ModelVersion) -> Path:
    """A local, sha256-verified copy of a version's artifact (for workers)."""
    return artifact_fetch(version.artifact, version.sha256)


def version_download(*, actor: Any, version: ModelVersion) -> VerifiedArtifact:
    """The version's artifact for a download, verified against its sha256 before the first byte.

    Altered or missing bytes are refused with 409 (the stored artifact, not the request, is
    at fault; the message says so) rather than sent under the original checksum.
    """
    model_require(actor, version.model, Action.DOWNLOAD)
    try:
        return artifact_open_verified(version.artifact, version.sha256)
    except ArtifactIntegrityError as exc:
        logger.error("download of %s refused: %s", version, exc)
        raise Conflict(
            f"Version {version.version} of {version.model.name!r} cannot be downloaded: {exc}. "
            "The download was refused; an administrator must restore the artifact or delete the version."
        ) from None


def version_model_directory(version: ModelVersion) -> Path:
    """A local directory holding a huggingface version's model (for workers).

    The archive is fetched and verified by sha256, then unpacked with the upload's checks
    into a cache named by the hash (registry.artifacts.artifact_unpacked); once there, it
    is reused without reading the archive again.
    """
    if version.format != ModelFormat.HUGGINGFACE:
        raise ValueError(f"a {version.format} version has no model directory; it is not a huggingface one")
    cached = artifact_unpacked_cached(version.sha256)
    if cached is not None:
        return cached
    return artifact_unpacked(artifact_fetch(version.artifact, version.sha256), version.sha256)


def version_update(
    *,
    actor: Any,
    version: ModelVersion,
    description: str | None = None,
    tags: Any = None,
    max_batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
    max_tokens_default: int | None = None,
    max_tokens_limit: int | None = None,
) -> ModelVersion:
    """Change a version's description, tags, batching or max_tokens (the artifact and signature are immutable)."""
    model_require(actor, version.model, Action.UPLOAD)

    def snapshot() -> dict[str, Any]:
        return {"description": version.description, "tags": sorted(version.tags.values_list("name", flat=True)),
                "max_batch_size": version.max_batch_size, "max_batch_delay_ms": version.max_batch_delay_ms,
                "max_tokens_default": version.max_tokens_default,
                "max_tokens_limit": version.max_tokens_limit}  # fmt: skip

    if max_batch_size is not None and not 1 <= max_batch_size <= 4096:
        raise InvalidInput("max_batch_size must be between 1 and 4096.", field="max_batch_size")
    if max_batch_delay_ms is not None and not 0 <= max_batch_delay_ms <= 1000:
        raise InvalidInput("max_batch_delay_ms must be between 0 and 1000.", field="max_batch_delay_ms")
    _max_tokens_check(version, max_tokens_default, max_tokens_limit)
    with transaction.atomic():
        before = snapshot()
        fields = {
            "description": description,
            "max_batch_size": max_batch_size,
            "max_batch_delay_ms": max_batch_delay_ms,
            "max_tokens_default": max_tokens_default,
            "max_tokens_limit": max_tokens_limit,
        }
        changed = [name for name, value in fields.items() if value is not None]
        for name in changed:
            setattr(version, name, fields[name])
        if changed:
            version.save(update_fields=[*changed, "updated_at"])
        if tags is not None:
            tags_set(version, tags_parse(tags))
        after = snapshot()
        if before != after:
            audit_record(actor, "version.update", model=version.model, object_type="version",
                         object_repr=f"v{version.version}", before=before, after=after)  # fmt: skip
    return version


def _max_tokens_check(version: ModelVersion, default: int | None, limit: int | None) -> None:
    """A generative version's max_tokens default and limit: positive, default <= limit, both within its context."""
    if default is None and limit is None:
        return
    named = "max_tokens_default" if default is not None else "max_tokens_limit"
    if version.task != TextTask.TEXT_GENERATION:
        kind = version.task or version.format
        raise InvalidInput(f"{named} applies only to text-generation versions; this one is {kind}.", field=named)
    for name, value in (("max_tokens_default", default), ("max_tokens_limit", limit)):
        if value is not None and value < 1:
            raise InvalidInput(f"{name} must be a positive number of tokens, not {value}.", field=name)
    context = (version.validation or {}).get("context_length")
    for name, value in (("max_tokens_limit", limit), ("max_tokens_default", default)):
        if value is not None and isinstance(context, int) and 0 < context < value:
            raise InvalidInput(f"{name} {value} is over the model's context length of {context} tokens.", field=name)
    effective_default = default if default is not None else version.max_tokens_default
    effective_limit = limit if limit is not None else version.max_tokens_limit
    if effective_default is not None and effective_limit is not None and effective_default > effective_limit:
        raise InvalidInput(
            f"max_tokens_default {effective_default} is over max_tokens_limit {effective_limit}.",
            field="max_tokens_default" if default is not None else "max_tokens_limit",
        )


def version_archive(*, actor: Any, version: ModelVersion, force: bool = False) -> ModelVersion:
    """Archive a version: it keeps its artifact and history.

    A version that holds an alias (production…) is refused with 409 naming it, unless
    `force`: then its aliases are removed too, and the audit trail says it was forced.
    """
    model_require(actor, version.model, Action.UPLOAD)
    _held_aliases_authorize(actor, version)
    if not force and version.status != VersionStatus.ARCHIVED:
        _held_aliases_refuse(version, list(version.aliases.values_list("name", flat=True)), "archiving")
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version.pk)
        if version.status == VersionStatus.ARCHIVED:
            return version
        if version.status in (VersionStatus.PENDING, VersionStatus.VALIDATING):
            raise Conflict(f"Version {version.version} is still {version.status}; archive it once validation ends.")
        dropped = _aliases_drop(actor, version, "archived", force, "archiving")
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
            after={"status": VersionStatus.ARCHIVED} | ({"forced": True} if dropped else {}),
        )
    return version


def version_restore(*, actor: Any, version: ModelVersion) -> ModelVersion:
    """Bring an archived version back: validated again before it can hold an alias."""
    model_require(actor, version.model, Action.UPLOAD)
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


def version_delete(*, actor: Any, version: ModelVersion, force: bool = False) -> None:
    """Delete a version and (after commit) its artifact; the number is not reused.

    A version that holds an alias is refused with 409 naming it, unless `force` (audited).
    """
    model_require(actor, version.model, Action.DELETE)
    path = version.artifact
    _held_aliases_authorize(actor, version)
    if not force:
        _held_aliases_refuse(version, list(version.aliases.values_list("name", flat=True)), "deleting")
    with transaction.atomic():
        dropped = _aliases_drop(actor, version, "version deleted", force, "deleting")
        audit_record(
            actor,
            "version.delete",
            model=version.model,
            object_type="version",
            object_repr=f"v{version.version}",
            before={"version": version.version, "sha256": version.sha256, "aliases": dropped},
            after={"forced": True} if dropped else None,
        )
        version.delete()
        transaction.on_commit(lambda: artifact_delete(path))
