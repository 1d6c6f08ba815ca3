"""The README's run command: `manage.py runportal` on a fresh data directory."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from tests.conftest import SIGNATURE
from tests.worker import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="runportal's embedded default only"),
]


def test_runportal_starts_everything_seeds_the_demo_and_prints_url_and_login(tmp_path_factory, model_files, processes):
    model_path = model_files["torchscript"]
    # A short path: the embedded Redis socket lives in it.
    data = Path(tmp_path_factory.mktemp("rp", numbered=True))
    port, grpc_port = free_port(), free_port()
    # As the README runs it: nothing configured, so it owns its data and Prometheus directories.
    ignored = ("CELERY_", "DATABASE_", "SQLITE_", "PROMETHEUS_MULTIPROC_DIR")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(ignored)}
    # gRPC on a port of the test's own (the default, 8001, may be another run's).
    environment |= {"PORTAL_DATA_DIR": str(data), "GRPC_BIND": f"127.0.0.1:{grpc_port}"}
    # runportal stops its Redis, worker and web server on SIGTERM; `processes` sends that to the
    # whole group (then SIGKILL) when the test ends, passed or failed.
    process = processes.start([sys.executable, "manage.py", "runportal", "--port", str(port)], environment,
                              data / "runportal.log")  # fmt: skip
    # Generous: it builds, trains and validates its eight demo models (four of them text models) first.
    deadline = time.monotonic() + 240
    output = ""
    while time.monotonic() < deadline and "Press Ctrl-C" not in output:
        assert process.poll() is None, output
        time.sleep(0.3)
        output = (data / "runportal.log").read_text()
    assert f"MaaS Portal is running at http://127.0.0.1:{port}/" in output, output
    assert re.search(r"Log in as admin / admin", output)
    assert f"gRPC (Open Inference Protocol v2): 127.0.0.1:{grpc_port}" in output, output

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
    # Static files were collected: hashed names, compressed, cached for a year.
    # charts.js inserts plotly (data-plotly) once its sketches are drawn; the page preloads the same file.
    page = session.get(f"{base}/monitoring/", timeout=10).text
    script = re.search(r'data-plotly="(/static/vendor/plotly-cartesian\.min\.[0-9a-f]{12}\.js)"', page)
    assert script, "the monitoring page does not load a hashed plotly bundle"
    assert f'<link rel="preload" href="{script[1]}" as="script">' in page
    assert re.search(r'src="/static/monitoring/sketch\.[0-9a-f]{12}\.js"', page)
    bundle = session.get(base + script[1], headers={"Accept-Encoding": "br, gzip"}, timeout=10)
    assert bundle.status_code == 200 and bundle.headers["Content-Encoding"] in ("br", "gzip")
    assert int(bundle.headers["Content-Length"]) < 520_000, bundle.headers  # 1.5 MB uncompressed
    assert "max-age=315360000" in bundle.headers["Cache-Control"] and "immutable" in bundle.headers["Cache-Control"]
    model = session.get(f"{base}/api/v1/models/iris-classifier/", timeout=10).json()
    assert model["aliases"] == {"production": 2, "staging": 2}
    versions = session.get(f"{base}/api/v1/models/iris-classifier/versions/", timeout=10).json()["results"]
    assert [(v["version"], v["status"]) for v in versions] == [(2, "ready"), (1, "ready")]
    # The generative demo model, ready for /v1/completions and the chat playground.
    (chat,) = session.get(f"{base}/api/v1/models/gpt2-chat/versions/", timeout=10).json()["results"]
    assert (chat["task"], chat["status"], chat["validation"]["chat_template"]) == ("text-generation", "ready", True)
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

    # OIP v2 over gRPC, on the port it printed, with a token made over the API.
    made = session.post(f"{base}/api/v1/tokens/", json={"name": "grpc", "scopes": ["predict"]},
                        headers={"X-CSRFToken": session.cookies["csrftoken"], "Referer": base}, timeout=10)  # fmt: skip
    assert made.status_code == 201, made.text
    with grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}") as rpc:
        assert rpc.is_server_live() and rpc.is_server_ready()
        features = grpcclient.InferInput("features", [1, 4], "FP32")
        features.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))
        result = rpc.infer("iris-classifier", [features], headers={"authorization": f"Bearer {made.json()['token']}"})
        assert result.as_numpy(result.get_response().outputs[0].name).shape[0] == 1

    processes.stop(process)
    # It stopped its children and itself on SIGTERM, not on the SIGKILL that follows a timeout.
    assert process.returncode == 0, (data / "runportal.log").read_text()[-3000:]
