"""manage.py upload_model: register a version from a file on disk (scripts, CI, seeding)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import NotFound, PortalError
from registry import selectors, services
from registry.models import ModelVersion, VersionStatus


def _json_arg(value: str | None, name: str) -> Any:
    """JSON given inline or as @path/to/file.json."""
    if value is None:
        return None
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--{name} is not valid JSON: {exc}") from None


class Command(BaseCommand):
    help = "Upload a TorchScript (.pt) or torch.export (.pt2) file as the next version of a model."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", help="Model name.")
        parser.add_argument("file", type=Path, help="The artifact to upload.")
        parser.add_argument("--user", required=True, help="Username recorded as the uploader.")
        parser.add_argument("--create", action="store_true", help="Register the model first if it does not exist.")
        parser.add_argument("--format", choices=["torchscript", "exported_program"])
        parser.add_argument("--signature", help='JSON or @file: {"inputs": [{"name","datatype","shape"}]}')
        parser.add_argument("--example-input", help='JSON or @file: {"inputs": [{"name","datatype","data"}]}')
        parser.add_argument("--labels", help="Comma-separated class names.")
        parser.add_argument("--description", default="")
        parser.add_argument("--tags", default="")
        parser.add_argument("--alias", help="Point this alias at the version once it is ready (implies --wait).")
        parser.add_argument("--wait", action="store_true", help="Wait until validation ends; fail if it fails.")
        parser.add_argument("--timeout", type=float, default=300, help="Seconds to wait for validation.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user named {options['user']!r}.")
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"{path} is not a file.")
        try:
            try:
                model = selectors.model_get(user, options["model"], for_change=True)
            except NotFound:
                if not options["create"]:
                    raise
                model = services.model_create(actor=user, name=options["model"])
            with path.open("rb") as stream:
                version = services.version_upload(
                    actor=user,
                    model=model,
                    file=File(stream, name=path.name),
                    filename=path.name,
                    format=options["format"],
                    signature=_json_arg(options["signature"], "signature"),
                    example_input=_json_arg(options["example_input"], "example-input"),
                    labels=options["labels"],
                    description=options["description"],
                    tags=options["tags"],
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
