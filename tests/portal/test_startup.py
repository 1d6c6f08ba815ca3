"""The web entry point leaves its start-up objects out of the garbage collector's full passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_asgi_application_freezes_what_start_up_made():
    # A process of its own: this one's objects (pytest's, the tests') would count as well.
    probe = "import gc, portal.asgi; print(gc.get_freeze_count())"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    # Django, the apps, torch and numpy: well over a hundred thousand objects (about 260k measured).
    assert int(done.stdout.split()[-1]) > 100_000, done.stdout
