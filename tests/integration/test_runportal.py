"""The README's run command: `manage.py runportal` on a fresh data directory."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import SIGNATURE

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="runportal's embedded default only"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_runportal_starts_everything_seeds_the_demo_and_prints_url_and_login(tmp_path_factory, model_files):
    model_path = model_files["torchscript"]
    # A short path: the embedded Redis socket lives in it.
    data = Path(tmp_path_factory.mktemp("rp", numbered=True))
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_", "SQLITE_"))}
    environment |= {"PORTAL_DATA_DIR": str(data)}
    log = (data / "runportal.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runportal", "--port", str(port)],
        cwd=ROOT,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        output = ""
        while time.monotonic() < deadline and "Press Ctrl-C" not in output:
            assert process.poll() is None, output
            time.sleep(0.3)
            output = (data / "runportal.log").read_text()
        assert f"MaaS Portal is running at http://127.0.0.1:{port}/" in output, output
        assert re.search(r"Log in as admin / admin", output)

        session = requests.Session()
        base = f"http://127.0.0.1:{port}"
        login_page = session.get(f"{base}/accounts/login/", timeout=10)
        assert login_page.status_code == 200
        response = session.post(
            f"{base}/accounts/login/",
            data={"username": "admin", "password": "admin", "csrfmiddlewaretoken": session.cookies["csrftoken"]},
            headers={"Referer": f"{base}/accounts/login/"},
            timeout=10,
        )
        assert response.status_code == 200 and "iris-classifier" in response.text
        model = session.get(f"{base}/api/v1/models/iris-classifier/", timeout=10).json()
        assert model["aliases"] == {"production": 2, "staging": 2}
        versions = session.get(f"{base}/api/v1/models/iris-classifier/versions/", timeout=10).json()["results"]
        assert [(v["version"], v["status"]) for v in versions] == [(2, "ready"), (1, "ready")]
        # The worker it started validates new uploads.
        with model_path.open("rb") as stream:
            uploaded = session.post(
                f"{base}/api/v1/models/iris-classifier/versions/",
                files={"file": ("iris.pt", stream)},
                data={"signature": json.dumps(SIGNATURE)},
                headers={"X-CSRFToken": session.cookies["csrftoken"], "Referer": base},
                timeout=30,
            )
        assert uploaded.status_code == 201, uploaded.text
        status = "pending"
        while time.monotonic() < deadline and status in ("pending", "validating"):
            time.sleep(0.3)
            status = session.get(f"{base}/api/v1/models/iris-classifier/versions/3/", timeout=10).json()["status"]
        assert status == "ready"
        # The demo queued one evaluation and sends some traffic: charts have data at once.
        runs: list = []
        served = 0
        while time.monotonic() < deadline and not (served and runs and runs[0]["status"] == "succeeded"):
            time.sleep(0.5)
            runs = session.get(f"{base}/api/v1/evaluations/?model=iris-classifier", timeout=10).json()
            stats = session.get(f"{base}/api/v1/models/iris-classifier/stats/", timeout=10).json()
            served = sum(entry["count"] for entry in stats["model_stats"])
        assert runs and runs[0]["status"] == "succeeded" and runs[0]["metrics"]["accuracy"] > 0.8, runs
        assert served > 0
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
    assert process.returncode is not None
