"""manage.py seed_demo: the demo admin and a demo model with two versions, one in production."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError

from portal import demo
from registry import services
from registry.models import RegisteredModel, VersionStatus, Visibility

DEMO_MODEL = "iris-classifier"


class Command(BaseCommand):
    help = "Create the demo admin user and the demo model (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        user = self._admin()
        if RegisteredModel.objects.filter(name=DEMO_MODEL).exists():
            self.stdout.write(f"Demo model {DEMO_MODEL} already exists.")
            return
        model = services.model_create(
            actor=user,
            name=DEMO_MODEL,
            visibility=Visibility.INTERNAL,
            tags=["demo", "tabular"],
            description="A 4-feature MLP classifier for iris-like flowers (three classes), built at seed time.",
        )
        with tempfile.TemporaryDirectory() as tmp:
            v1 = self._upload(
                user,
                model,
                demo.save_torchscript(demo.iris_classifier(hidden=8, steps=30), Path(tmp) / "iris-small.pt"),
                "A small first model (8 hidden units, 30 training steps).",
            )
            v2 = self._upload(
                user,
                model,
                demo.save_exported_program(
                    demo.iris_classifier(hidden=32, steps=300), (torch.randn(2, 4),), Path(tmp) / "iris.pt2"
                ),
                "Wider and trained longer (32 hidden units, 300 steps), saved with torch.export.",
            )
        services.alias_set(actor=user, model=model, name="production", version_number=v1)
        services.alias_set(actor=user, model=model, name="production", version_number=v2)
        services.alias_set(actor=user, model=model, name="staging", version_number=v2)
        self.stdout.write(f"Seeded {DEMO_MODEL}: v{v1} and v{v2}; production → v{v2} (roll back goes to v{v1}).")

    def _admin(self) -> Any:
        users = get_user_model()
        user = users.objects.filter(username=settings.DEMO_USERNAME).first()
        if user is None:
            user = users.objects.create_superuser(settings.DEMO_USERNAME, "", settings.DEMO_PASSWORD)
            self.stdout.write(f"Created admin user {user.username}.")
        return user

    def _upload(self, user: Any, model: RegisteredModel, path: Path, description: str) -> int:
        with path.open("rb") as stream:
            version = services.version_upload(
                actor=user,
                model=model,
                file=File(stream, name=path.name),
                filename=path.name,
                signature=demo.IRIS_SIGNATURE,
                labels=demo.IRIS_LABELS,
                description=description,
                enqueue=False,
            )
        # Validated here, in the seeding process, so the demo is complete before a worker starts.
        if services.version_validate(version.pk) != VersionStatus.READY:
            version.refresh_from_db()
            raise CommandError(f"Demo version failed validation: {version.status_reason}")
        return version.version
