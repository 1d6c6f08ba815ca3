"""Conversions: start, cancel, read, and the lineage of a version (what views, the API and the command call)."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.urls import reverse

from core import broker
from core import redis as shared_redis
from core.errors import Conflict, InvalidInput, PermissionDenied
from inference import wire
from inference.conversions import recipes
from inference.conversions.work import conversion_enqueue
from inference.models import ConversionRun, RunStatus
from inference.runs.lifecycle import run_cancel, run_lookup
from registry import hooks, selectors
from registry.access import Action, model_permits, model_require
from registry.audit import audit_record
from registry.models import ModelVersion, VersionStatus

logger = logging.getLogger(__name__)


def gpu_worker_live() -> bool:
    """Whether a live worker serves CONVERSION_GPU_QUEUE (its serving heartbeat is fresh)."""
    queue = settings.CONVERSION_GPU_QUEUE
    if not queue:
        return False
    try:
        raw = shared_redis.client().hgetall(wire.WORKERS_KEY)
    except Exception as exc:  # Redis away: no worker can be known to be live
        logger.warning("reading the workers' heartbeats failed: %s", exc)
        return False
    horizon = time.time() - settings.INFERENCE_WORKER_TTL_SECONDS
    for value in raw.values():
        try:
            beat = wire.Heartbeat.decode(value if isinstance(value, bytes) else value.encode())
        except wire.WireError:
            continue
        if beat.beat_at >= horizon and queue in beat.queues:
            return True
    return False


def conversion_targets(user: Any, version: ModelVersion) -> list[str]:
    """The targets the version page offers this user: none unless they may upload and the version is ready."""
    if version.status != VersionStatus.READY or not model_permits(user, version.model, Action.UPLOAD):
        return []
    return recipes.targets_allowed(
        version.format, version.task, gpu_available=_fp16_possible(), derived_as=_derived_as(version)
    )


def _derived_as(version: ModelVersion) -> str:
    return str((version.source or {}).get("conversion_target", "")) if version.parent_id else ""


def _fp16_possible() -> bool:
    return bool(settings.CONVERSION_GPU_QUEUE) and gpu_worker_live()


def conversion_start(*, actor: Any, version: ModelVersion, target: str, options: Any = None) -> ConversionRun:
    """Queue the conversion of a ready version to `target`; a clear 4xx when it cannot be done."""
    model_require(actor, version.model, Action.UPLOAD)
    if target not in recipes.TARGETS:
        raise InvalidInput(f"Unknown target {target!r}; the targets are {', '.join(recipes.TARGETS)}.", field="target")
    if version.status != VersionStatus.READY:
        raise Conflict(
            f"Version {version.version} of {version.model.name!r} is {version.status}; only ready "
            "versions can be converted.",
            field="version",
        )
    gpu = _fp16_possible() if target == recipes.FP16 else False
    refusal = recipes.target_refusal(
        version.format, version.task, target, gpu_available=gpu, derived_as=_derived_as(version)
    )
    if refusal:
        if target == recipes.FP16 and version.format in recipes.SOURCE_TARGETS:
            raise Conflict(refusal, field="target")  # the deployment, not the request, is missing something
        raise InvalidInput(refusal, field="target")
    parsed = recipes.options_parse(target, options)
    # Refused (503) before the run exists while the broker cannot take it.
    broker.broker_check()
    with transaction.atomic():
        run = ConversionRun.objects.create(
            version=version,
            model_name=version.model.name,
            version_number=version.version,
            target=target,
            options=parsed,
            created_by=actor if getattr(actor, "pk", None) else None,
            total_rows=len(recipes.STEPS[target]),
        )
        audit_record(
            actor,
            "version.convert",
            model=version.model,
            object_type="version",
            object_repr=f"v{version.version}",
            after={"conversion": str(run.pk), "target": target, "options": parsed},
        )
        transaction.on_commit(lambda: conversion_enqueue(run.pk))
    logger.info("queued %s", run)
    return run


def conversions_visible_to(user: Any) -> QuerySet[ConversionRun]:
    """Conversions of models the user may see (and those whose source was deleted, to staff and their owner)."""
    runs = ConversionRun.objects.select_related("version__model", "child", "created_by")
    if not getattr(user, "is_authenticated", False):
        return runs.none()
    return runs.filter(version__model__in=selectors.models_visible_to(user)) | runs.filter(
        version__isnull=True, created_by=user
    )


def conversion_get(user: Any, run_id: Any) -> ConversionRun:
    """A conversion the user may see, else NotFound."""
    return run_lookup(conversions_visible_to(user), run_id)


def conversion_cancel(*, actor: Any, run: ConversionRun) -> ConversionRun:
    """Cancel a conversion: a queued one at once, a running one before its next step."""
    if run.version is not None:
        model_require(actor, run.version.model, Action.UPLOAD)
    elif run.created_by_id != getattr(actor, "pk", None) and not getattr(actor, "is_staff", False):
        raise PermissionDenied("Only the person who started this conversion (or staff) may cancel it.")
    cancelled = run_cancel(ConversionRun, run.pk)
    logger.info("%s: cancel requested by %s", cancelled, getattr(actor, "username", actor))
    return cancelled


def _link(version: ModelVersion) -> dict[str, Any]:
    source = version.source or {}
    recipe = {key: source[key] for key in ("conversion_target", "conversion_options") if key in source}
    return {
        "version": version.version,
        "format": version.format,
        "status": version.status,
        "derivation": version.derivation,
        "recipe": recipe,
        "conversion": source.get("conversion", ""),
    }


def version_lineage(version: ModelVersion) -> dict[str, Any]:
    """The chain of parents up to the root (oldest first, ending with this version), and its children."""
    chain, seen, current = [version], {version.pk}, version
    while current.parent_id is not None and len(chain) < 50:
        parent = ModelVersion.objects.filter(pk=current.parent_id).first()
        if parent is None or parent.pk in seen:
            break
        chain.append(parent)
        seen.add(parent.pk)
        current = parent
    children = list(version.derived.order_by("version"))
    return {"chain": [_link(v) for v in reversed(chain)], "children": [_link(v) for v in children]}


# The prefix of the version comparison's rows that conversions fill (the version page shows them itself).
METRIC_PREFIX = "conversion "


def version_metrics(versions: list[ModelVersion]) -> hooks.VersionMetrics:
    """The version comparison's rows of succeeded conversions among these versions: latency p50/p95 of
    parent and child (measured the same way, in the run) and the child's max abs diff from its parent."""
    ids = {version.pk for version in versions}
    figures: hooks.VersionMetrics = {}
    runs = ConversionRun.objects.filter(status=RunStatus.SUCCEEDED, child_id__in=ids).order_by("created_at")
    for run in runs:
        link = reverse("inference:conversion-detail", args=[run.pk])
        latency = (run.result or {}).get("latency_ms") or {}
        for side, version_id in (("parent", run.version_id), ("child", run.child_id)):
            if version_id not in ids:
                continue
            rows = figures.setdefault(version_id, {})
            for quantile in ("p50", "p95"):
                value = (latency.get(side) or {}).get(quantile)
                if isinstance(value, int | float):
                    rows[f"{METRIC_PREFIX}{run.short_id} · latency {quantile} ms"] = (f"{value:.4g}", link)
        diff = ((run.result or {}).get("comparison") or {}).get("max_abs_diff")
        if isinstance(diff, int | float) and run.child_id is not None:
            figures.setdefault(run.child_id, {})[f"{METRIC_PREFIX}{run.short_id} · max abs diff"] = (
                f"{diff:.3g}",
                link,
            )
    return figures
