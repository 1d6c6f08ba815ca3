"""manage.py upload_model: register a version from a file on disk (scripts, CI, seeding)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import NotFound, PortalError
from registry import selectors, services
from registry.archives import directory_zip
from registry.models import ModelFormat, ModelVersion, VersionStatus
from registry.sources import source_from_lines
from registry.text_tasks import TASK_ALIASES, TextTask


def _json_arg(value: str | None, name: str) -> Any:
    """JSON given inline or as @path/to/file.json."""
    if value is None:
        return None
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--{name} is not valid JSON: {exc}") from None


def _source(raw_json: str | None, pairs: list[str]) -> Any:
    """--source-json, then each --source KEY=VALUE over it (registry.sources checks the result)."""
    source = _json_arg(raw_json, "source-json")
    if not pairs:
        return source
    if source is not None and not isinstance(source, dict):
        raise CommandError("--source-json must be a JSON object to combine it with --source.")
    return {**(source or {}), **source_from_lines("\n".join(pairs))}


@contextlib.contextmanager
def _packed(path: Path) -> Iterator[tuple[Path, str]]:
    """The file to upload and its name: the file itself, or a directory zipped to a temporary file.

    The zip is written to disk file by file (never held in memory) and removed afterwards.
    """
    if not path.is_dir():
        yield path, path.name
        return
    handle, name = tempfile.mkstemp(suffix=".zip", prefix="upload-model-")
    try:
        with os.fdopen(handle, "wb") as target:
            if directory_zip(path, target) == 0:
                raise CommandError(f"{path} holds no files.")
        yield Path(name), f"{path.resolve().name}.zip"
    finally:
        os.unlink(name)


class Command(BaseCommand):
    help = (
        "Upload a TorchScript (.pt) or torch.export (.pt2) file, an ONNX model (.onnx, or with its external data "
        "as a .zip / .tar.gz), or a Hugging Face model (a save_pretrained directory, or its .zip / .tar.gz), as the "
        "next version of a model."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", help="Model name.")
        parser.add_argument(
            "file", type=Path, help="The artifact to upload, or a Hugging Face save_pretrained directory (zipped)."
        )
        parser.add_argument("--user", required=True, help="Username recorded as the uploader.")
        parser.add_argument("--create", action="store_true", help="Register the model first if it does not exist.")
        parser.add_argument("--format", choices=ModelFormat.values)
        parser.add_argument(
            "--task",
            choices=[*TextTask.values, *TASK_ALIASES],
            help="Hugging Face models: the task (inferred from config.json's architectures when left out).",
        )
        parser.add_argument("--signature", help='JSON or @file: {"inputs": [{"name","datatype","shape"}]}')
        parser.add_argument("--example-input", help='JSON or @file: {"inputs": [{"name","datatype","data"}]}')
        parser.add_argument("--labels", help="Comma-separated class names.")
        parser.add_argument("--description", default="")
        parser.add_argument("--tags", default="")
        parser.add_argument(
            "--source",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="Where the artifact came from, repeatable: --source run_url=https://… --source git_commit=3f2a9c1 "
            "(also dataset, run_id or any key; *_url values must be http(s) URLs).",
        )
        parser.add_argument("--source-json", help='JSON or @file: {"run_url": "https://…", "dataset": "…"}')
        parser.add_argument("--parent", type=int, help="Version number this one was derived from.")
        parser.add_argument("--derivation", default="", help="How it was derived from --parent.")
        parser.add_argument("--alias", help="Point this alias at the version once it is ready (implies --wait).")
        parser.add_argument("--wait", action="store_true", help="Wait until validation ends; fail if it fails.")
        parser.add_argument("--timeout", type=float, default=300, help="Seconds to wait for validation.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user named {options['user']!r}.")
        path: Path = options["file"]
        if not (path.is_file() or path.is_dir()):
            raise CommandError(f"{path} is neither a file nor a directory.")
        try:
            try:
                model = selectors.model_get(user, options["model"], for_change=True)
            except NotFound:
                if not options["create"]:
                    raise
                model = services.model_create(actor=user, name=options["model"])
            with _packed(path) as (upload, filename), upload.open("rb") as stream:
                version = services.version_upload(
                    actor=user,
                    model=model,
                    file=File(stream, name=filename),
                    filename=filename,
                    format=options["format"],
                    task=options["task"],
                    signature=_json_arg(options["signature"], "signature"),
                    example_input=_json_arg(options["example_input"], "example-input"),
                    labels=options["labels"],
                    description=options["description"],
                    tags=options["tags"],
                    parent_version=options["parent"],
                    derivation=options["derivation"],
                    source=_source(options["source_json"], options["source"]),
                )
        except PortalError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(
            f"Uploaded {model.name} v{version.version} ({version.size_bytes} bytes, sha256 {version.sha256})."
        )
        if options["wait"] or options["alias"]:
            version = self._wait(version, options["timeout"])
            if options["alias"]:
                services.alias_set(actor=user, model=model, name=options["alias"], version_number=version.version)
                self.stdout.write(f"{options['alias']} → v{version.version}")

    def _wait(self, version: ModelVersion, timeout: float) -> ModelVersion:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            version.refresh_from_db()
            if version.status == VersionStatus.READY:
                self.stdout.write(f"v{version.version} is ready.")
                return version
            if version.status == VersionStatus.FAILED:
                raise CommandError(f"Validation failed: {version.status_reason}")
            time.sleep(0.5)
        raise CommandError(f"v{version.version} is still {version.status} after {timeout:.0f}s; is a worker running?")
