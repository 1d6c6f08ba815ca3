"""`manage.py convert_version MODEL VERSION --target onnx-int8 --user NAME [--wait]`: start a conversion."""

from __future__ import annotations

import json
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import PortalError
from inference.conversions import recipes, services
from inference.models import ConversionRun
from registry import selectors


class Command(BaseCommand):
    help = "Convert a ready version (onnx, onnx-int8, fp16); the result is a new version of the same model."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", help="Model name.")
        parser.add_argument("version", type=int, help="Version number of the source.")
        parser.add_argument("--target", required=True, help=f"One of {', '.join(recipes.TARGETS)}.")
        parser.add_argument("--options", help='JSON object, e.g. {"opset": 18} or {"per_channel": true}.')
        parser.add_argument("--user", required=True, help="Username the conversion runs for (may upload versions).")
        parser.add_argument("--wait", action="store_true", help="Wait until the conversion ends; fail if it fails.")
        parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds --wait waits at most.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user {options['user']!r}.")
        try:
            raw = json.loads(options["options"]) if options["options"] else None
        except json.JSONDecodeError as exc:
            raise CommandError(f"--options is not valid JSON: {exc}") from None
        try:
            version = selectors.version_get(user, options["model"], options["version"])
            run = services.conversion_start(actor=user, version=version, target=options["target"], options=raw)
        except PortalError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Queued conversion {run.pk} ({run.model_name} v{run.version_number} → {run.target}).")
        if not options["wait"]:
            return
        deadline = time.monotonic() + options["timeout"]
        while run.is_active:
            if time.monotonic() > deadline:
                raise CommandError(f"Conversion {run.pk} is still {run.status} after {options['timeout']:g}s.")
            time.sleep(1.0)
            run = ConversionRun.objects.select_related("child").get(pk=run.pk)
        if run.status != "succeeded" or run.child is None:
            raise CommandError(f"Conversion {run.pk} {run.status}: {run.error}")
        diff = run.result.get("comparison", {}).get("max_abs_diff", 0.0)
        self.stdout.write(
            self.style.SUCCESS(f"Converted: {run.model_name} v{run.child.version} (max abs diff {diff:.3g}).")
        )
