"""manage.py seed_demo: the demo admin and the demo models, each with `production` set.

- iris-classifier: an MLP classifier with class labels, two versions (roll back ready to press)
- house-price: a linear regressor
- image-classifier: a small CNN on 3x64x64 images
- sentiment: a tiny transformer encoder over INT64 token ids of any length

and the Hugging Face text models of portal.demo_text (fill-mask, sentence classifier, embeddings).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError

from inference import validation
from portal import demo
from portal.demo_monitoring import demo_evaluation_seed
from portal.demo_text import text_demo_seed, text_evaluation_seed
from registry import services
from registry.models import RegisteredModel, VersionStatus, Visibility

DEMO_MODEL = "iris-classifier"

Builder = Callable[[Path], Path]
# name, description, tags, signature, labels, versions as (file name, builder, description)
DEMOS: list[tuple[str, str, list[str], dict[str, Any], list[str], list[tuple[str, Builder, str]]]] = [
    (
        "iris-classifier", "A 4-feature MLP classifier for iris-like flowers (three classes), built at seed time.",
        ["demo", "tabular"], demo.IRIS_SIGNATURE, demo.IRIS_LABELS,
        [
            ("iris-small.pt", lambda p: demo.save_torchscript(demo.iris_classifier(hidden=8, steps=30), p),
             "A small first model (8 hidden units, 30 training steps)."),
            ("iris.pt2", lambda p: demo.save_exported_program(demo.iris_classifier(hidden=32, steps=300),
                                                              (torch.randn(2, 4),), p),
             "Wider and trained longer (32 hidden units, 300 steps), saved with torch.export."),
        ],
    ),
    (
        "house-price", "Linear regression: price (k€) from rooms, age (years) and distance to the centre (km).",
        ["demo", "regression"], demo.HOUSE_SIGNATURE, [],
        [("house.pt", lambda p: demo.save_torchscript(demo.HousePrice(), p), "25*rooms - 0.8*age - 3.5*km + 120")],
    ),
    (
        "image-classifier", "A small CNN over 3x64x64 images, ten classes (untrained weights: for serving demos).",
        ["demo", "vision"], demo.CNN_SIGNATURE, demo.CNN_LABELS,
        [("cnn.pt", lambda p: demo.save_torchscript(demo.cnn(), p), "Three conv layers (32/64/128) with pooling.")],
    ),
    (
        "sentiment", "A tiny transformer encoder over token ids of any length, two classes (untrained).",
        ["demo", "nlp"], demo.ENCODER_SIGNATURE, ["negative", "positive"],
        [("encoder.pt2", lambda p: demo.save_encoder(demo.tiny_encoder(), p), "One encoder layer, width 32.")],
    ),
]  # fmt: skip


class Command(BaseCommand):
    help = "Create the demo admin user and the demo models (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        user = self._admin()
        with tempfile.TemporaryDirectory() as tmp:
            for name, description, tags, signature, labels, versions in DEMOS:
                if RegisteredModel.objects.filter(name=name).exists():
                    continue
                model = services.model_create(
                    actor=user, name=name, description=description, tags=tags, visibility=Visibility.INTERNAL
                )
                numbers = [
                    self._upload(user, model, build(Path(tmp) / filename), signature, labels, text)
                    for filename, build, text in versions
                ]
                for number in numbers:
                    services.alias_set(actor=user, model=model, name="production", version_number=number)
                services.alias_set(actor=user, model=model, name="staging", version_number=numbers[-1])
                self.stdout.write(f"Seeded {name}: {', '.join(f'v{n}' for n in numbers)}; production → v{numbers[-1]}")
        for name in text_demo_seed(user):
            self.stdout.write(f"Seeded {name}: v1; production → v1")
        if demo_evaluation_seed(user) is not None:
            self.stdout.write("Queued an evaluation of iris-classifier on iris-holdout.")
        if text_evaluation_seed(user) is not None:
            self.stdout.write("Queued an evaluation of bert-sentiment on reviews-holdout.")

    def _admin(self) -> Any:
        users = get_user_model()
        user = users.objects.filter(username=settings.DEMO_USERNAME).first()
        if user is None:
            user = users.objects.create_superuser(settings.DEMO_USERNAME, "", settings.DEMO_PASSWORD)
            self.stdout.write(f"Created admin user {user.username}.")
        return user

    def _upload(
        self, user: Any, model: RegisteredModel, path: Path, signature: dict[str, Any], labels: list[str], text: str
    ) -> int:
        with path.open("rb") as stream:
            version = services.version_upload(
                actor=user, model=model, file=File(stream, name=path.name), filename=path.name,
                signature=signature, labels=labels, description=text, enqueue=False,
            )  # fmt: skip
        # Validated here, in the seeding process, so the demo is complete before a worker starts.
        if validation.version_validate(version.pk) != VersionStatus.READY:
            version.refresh_from_db()
            raise CommandError(f"Demo {model.name} v{version.version} failed validation: {version.status_reason}")
        return version.version
