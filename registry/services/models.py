"""Registered models: create, update, delete; tags and names."""

from __future__ import annotations

import re
from typing import Any

from django.db import IntegrityError, transaction

from core.errors import Conflict, InvalidInput
from registry import hooks
from registry.access import Action, model_require
from registry.artifacts import artifact_delete
from registry.audit import audit_record
from registry.models import ALIAS_NAME_RE, MODEL_NAME_RE, TAG_RE, ModelVersion, RegisteredModel, Tag, Visibility

MAX_TAGS = 20


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
        raise InvalidInput(
            f"Invalid tag {bad[0]!r}: use letters, digits, '.', '_', ':' or '-', or key=value (max 50).", field="tags"
        )
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"At most {MAX_TAGS} tags.", field="tags")
    return tags


def tags_set(obj: RegisteredModel | ModelVersion, names: list[str]) -> None:
    obj.tags.set([Tag.objects.get_or_create(name=name)[0] for name in names])


def _model_name_check(name: Any) -> str:
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
        raise InvalidInput(
            f"Invalid model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
            field="name",
        )
    return name


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
            tags_set(model, tag_names)
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
    """Change a model's description, tags or visibility (the `manage` right)."""
    model_require(actor, model, Action.MANAGE)
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
            tags_set(model, tags_parse(tags))
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


def model_delete(*, actor: Any, model: RegisteredModel, force: bool = False) -> None:
    """Delete a model with its versions, aliases and other apps' data; their files go once the delete commits.

    A model that serves under an alias is refused with 409 naming it, unless `force` (audited)."""
    model_require(actor, model, Action.DELETE)
    paths = list(model.versions.values_list("artifact", flat=True)) + hooks.model_files(model)
    with transaction.atomic():
        held = dict(model.aliases.values_list("name", "version__version"))
        if held and not force:
            serving = ", ".join(f"{alias!r} (v{number})" for alias, number in sorted(held.items()))
            raise Conflict(
                f"Model {model.name!r} serves under {serving}; deleting it would take "
                f"{'it' if len(held) == 1 else 'them'} offline. Remove the aliases first, or delete with "
                "force=true (audited).",
                field="force",
            )
        audit_record(
            actor,
            "model.delete",
            model=None,
            object_type="model",
            object_repr=model.name,
            before={"versions": model.versions.count(), "owner": model.owner.username, "aliases": held},
            after={"forced": True} if held else None,
        )
        # Earlier events keep the name but lose the link, which the delete would null anyway.
        model.delete()

        def delete_artifacts() -> None:
            for path in paths:
                artifact_delete(path)

        transaction.on_commit(delete_artifacts)


# Alias names that would read as a version or a keyword where a version is expected.
RESERVED_ALIAS_NAMES = frozenset({"latest", "current", "head", "newest", "oldest", "all", "none", "null", "new"})
VERSION_LIKE_RE = re.compile(r"^v(er(sion)?)?[-_]?\d+([._-]\d+)*$")


def alias_name_check(name: Any) -> str:
    """An alias name: lower-case, starts with a letter, at most 32 characters, and reads as neither a
    version (`v3`, `version-2`; digits alone already fail the first rule) nor a keyword (`latest`)."""
    if not isinstance(name, str) or not ALIAS_NAME_RE.match(name):
        raise InvalidInput(
            f"Invalid alias name {name!r}: use 1-32 lower-case letters, digits, '_' or '-', starting with a letter.",
            field="name",
        )
    if VERSION_LIKE_RE.match(name):
        raise InvalidInput(
            f"Invalid alias name {name!r}: it reads like a version number, which an alias must not be mistaken "
            "for; name what it is for (production, staging, canary).",
            field="name",
        )
    if name in RESERVED_ALIAS_NAMES:
        raise InvalidInput(
            f"Invalid alias name {name!r}: it is a reserved word ({', '.join(sorted(RESERVED_ALIAS_NAMES))}) that "
            "reads as a rule rather than a name; name what it is for (production, staging, canary).",
            field="name",
        )
    return name
