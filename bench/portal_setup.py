"""Prepare a portal for bench/serving.py: migrate, a superuser with an API token, the models.

Run in a subprocess with the portal's environment of the backend being measured (SQLite +
embedded Redis, or PostgreSQL + Redis); the broker must be up (alias changes publish cache
invalidations). Each model is registered, uploaded and validated here, as seed_demo does,
and `production` points at it. Prints one JSON line: the bearer token and, per model, its
version and signature (with the outputs validation filled in).

    python bench/portal_setup.py mlp=/tmp/…/mlp.pt cnn=/tmp/…/cnn.pt
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> dict[str, Any]:
    """Set the portal up for the models given as name=path arguments."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.files import File
    from django.core.management import call_command

    from accounts.services import token_create
    from inference import validation
    from portal import demo
    from registry import services
    from registry.models import VersionStatus, Visibility

    signatures = {"mlp": demo.MLP_SIGNATURE, "cnn": demo.CNN_SIGNATURE}
    call_command("migrate", interactive=False, verbosity=0)
    user = get_user_model().objects.create_superuser("bench", "", "bench-password-not-a-secret")
    _, bearer = token_create(user=user, name="serving benchmark")
    result: dict[str, Any] = {"token": bearer, "models": {}}
    for item in argv:
        name, _, path = item.partition("=")
        model = services.model_create(
            actor=user, name=name, description="serving benchmark", visibility=Visibility.INTERNAL
        )
        with Path(path).open("rb") as stream:
            version = services.version_upload(
                actor=user, model=model, file=File(stream, name=Path(path).name), filename=Path(path).name,
                signature=signatures[name], enqueue=False,
            )  # fmt: skip
        if validation.version_validate(version.pk) != VersionStatus.READY:
            version.refresh_from_db()
            raise SystemExit(f"{name} v{version.version} failed validation: {version.status_reason}")
        services.alias_set(actor=user, model=model, name="production", version_number=version.version)
        version.refresh_from_db()
        result["models"][name] = {
            "version": version.version,
            "signature": version.signature,
            "batching": bool(version.validation.get("batching")),
            "max_batch_size": version.max_batch_size,
            "max_batch_delay_ms": version.max_batch_delay_ms,
        }
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
