"""The model host's entry point: `python -m inference.sandbox.host --channel FD`.

Started by a trusted parent (a Celery pool process) with a scrubbed environment and one
end of a unix socket pair. It reads its configuration from the pair, restricts itself for
good (inference.sandbox.policy) before it imports anything that reads a model, configures
Django with the few settings it was given (no secret key of the portal's, no database, no
storage), and then serves: the online loops (mode "serve") or requests of a task (mode
"task"), both in inference.sandbox.hosted.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from pathlib import Path
from typing import Any

from inference.sandbox import policy
from inference.sandbox.channel import Channel

logger = logging.getLogger("inference.sandbox.host")

# Exit status when the kernel cannot enforce the sandbox (the parent reports it).
EXIT_UNAVAILABLE = 3


def _django_configure(values: dict[str, Any]) -> None:
    """Settings of the host: only what loading and serving models read, no database at all."""
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY=secrets.token_urlsafe(32),  # never the portal's: nothing here signs anything
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "accounts", "registry", "inference"],
        DATABASES={},
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
        **values,
    )
    django.setup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channel", type=int, required=True, help="descriptor of the socket to the parent")
    args = parser.parse_args(argv)
    channel = Channel.from_fd(args.channel)
    config, _ = channel.receive()
    logging.basicConfig(level=config.get("log_level", "INFO"), stream=sys.stderr,
                        format="[%(asctime)s: %(levelname)s/model-host] %(message)s")  # fmt: skip
    rules = policy.Policy(
        read=[Path(p) for p in config["read"]],
        write=[Path(p) for p in config["write"]],
        devices=[Path(p) for p in config["devices"]],
        list_only=[Path(p) for p in config["list_only"]],
    )
    try:
        applied = policy.sandbox_apply(rules, minimum_abi=int(config["minimum_abi"]))
    except (policy.SandboxUnavailable, OSError) as exc:
        channel.send({"ok": False, "error": f"the model sandbox cannot be applied on this machine: {exc}"})
        return EXIT_UNAVAILABLE
    _django_configure(config["settings"])
    # Imported only now: Django must be configured before the portal's models load.
    from inference.sandbox import hosted

    return hosted.run(channel, config, applied)


if __name__ == "__main__":
    sys.exit(main())
