"""Prepare a portal for bench/text.py: migrate, a superuser with an API token, the text models.

Run in a subprocess with the portal's environment. Each `name=task=archive.zip` argument is
registered, uploaded as a `huggingface` version, validated here (as seed_demo does) and
given the `production` alias. Prints one JSON line: the bearer token and each version's
validation figures.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.files import File
    from django.core.management import call_command

    from accounts.services import token_create
    from inference import validation
    from registry import services
    from registry.models import VersionStatus, Visibility

    call_command("migrate", interactive=False, verbosity=0)
    user = get_user_model().objects.create_superuser("bench", "", "bench-password-not-a-secret")
    _, bearer = token_create(user=user, name="text benchmark")
    result: dict[str, Any] = {"token": bearer, "models": {}}
    for item in argv:
        name, task, path = item.split("=", 2)
        model = services.model_create(actor=user, name=name, description="text benchmark",
                                      visibility=Visibility.INTERNAL)  # fmt: skip
        with Path(path).open("rb") as stream:
            version = services.version_upload(
                actor=user, model=model, file=File(stream, name=Path(path).name), filename=Path(path).name,
                format="huggingface", task=task, enqueue=False,
            )  # fmt: skip
        if validation.version_validate(version.pk) != VersionStatus.READY:
            version.refresh_from_db()
            raise SystemExit(f"{name} v{version.version} failed validation: {version.status_reason}")
        services.alias_set(actor=user, model=model, name="production", version_number=version.version)
        version.refresh_from_db()
        result["models"][name] = {"version": version.version, "validation": version.validation,
                                  "max_batch_size": version.max_batch_size}  # fmt: skip
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
