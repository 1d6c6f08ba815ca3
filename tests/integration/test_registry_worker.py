"""The registry end to end: HTTP server, broker and a separate worker process."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.management import call_command

from accounts import services as token_services
from registry.models import AuditEvent, ModelVersion
from tests.conftest import SIGNATURE

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def http(live_server: Any, owner: Any, worker: Any) -> requests.Session:
    """A requests session against the live server, authenticated by a real API token."""
    _, secret = token_services.token_create(user=owner, name="integration")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {secret}"
    session.base_url = live_server.url  # type: ignore[attr-defined]
    return session


def upload(http: requests.Session, model: str, path: Path, **fields: Any) -> requests.Response:
    import json

    data = {key: json.dumps(value) if isinstance(value, (dict, list)) else value for key, value in fields.items()}
    with path.open("rb") as stream:
        return http.post(
            f"{http.base_url}/api/v1/models/{model}/versions/",
            files={"file": (path.name, stream)},
            data=data,
            timeout=60,
        )


def wait_settled(http: requests.Session, model: str, version: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"{http.base_url}/api/v1/models/{model}/versions/{version}/", timeout=10).json()
        if body["status"] in ("ready", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"{model} v{version} still {body['status']} after {timeout}s")


def test_upload_is_validated_by_a_separate_worker_process(http, registered_model, model_files, worker):
    response = upload(http, "iris", model_files["torchscript"], signature=SIGNATURE, labels=["a", "b", "c"])
    assert response.status_code == 201, response.text
    body = wait_settled(http, "iris", response.json()["version"])
    assert body["status"] == "ready", body["status_reason"]
    assert body["validation"]["parameter_count"] == 4 * 8 + 8 + 8 * 3 + 3
    assert body["validation"]["latency_ms"]["p50"] > 0
    assert body["signature"]["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}]
    assert not body["validation"]["worker"].endswith(f":{os.getpid()}")
    assert "inference.validation.version_validate" in worker.output()


def test_exported_program_and_failed_validation_over_the_worker(http, registered_model, model_files):
    ok = upload(http, "iris", model_files["exported_program"], signature=SIGNATURE)
    bad = upload(
        http,
        "iris",
        model_files["torchscript"],
        signature={"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 5]}]},
    )
    assert wait_settled(http, "iris", ok.json()["version"])["status"] == "ready"
    failed = wait_settled(http, "iris", bad.json()["version"])
    assert failed["status"] == "failed"
    assert "forward pass failed" in failed["status_reason"]


def test_promote_and_roll_back_over_http(http, registered_model, model_files):
    for _ in range(2):
        version = upload(http, "iris", model_files["torchscript"], signature=SIGNATURE).json()["version"]
        assert wait_settled(http, "iris", version)["status"] == "ready"
        url = f"{http.base_url}/api/v1/models/iris/aliases/production/"
        moved = http.put(url, json={"version": version}, timeout=10)
        assert moved.status_code == 200, moved.text
    rolled = http.post(f"{http.base_url}/api/v1/models/iris/aliases/production/rollback/", timeout=10)
    assert rolled.json()["version"] == 1
    assert AuditEvent.objects.filter(action="alias.rollback").count() == 1


def test_concurrent_uploads_get_distinct_version_numbers(http, registered_model, model_files):
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(
            pool.map(lambda _: upload(http, "iris", model_files["torchscript"], signature=SIGNATURE), range(20))
        )
    assert [r.status_code for r in responses] == [201] * 20, [r.text for r in responses if r.status_code != 201]
    assert sorted(r.json()["version"] for r in responses) == list(range(1, 21))
    assert ModelVersion.objects.filter(model=registered_model).count() == 20
    registered_model.refresh_from_db()
    assert registered_model.last_version_number == 20


def test_management_command_uploads_and_waits_for_the_worker(owner, registered_model, model_files, worker, capsys):
    call_command(
        "upload_model",
        "iris",
        str(model_files["torchscript"]),
        "--user",
        owner.username,
        "--signature",
        '{"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]}',
        "--alias",
        "staging",
        "--timeout",
        "60",
    )
    out = capsys.readouterr().out
    assert "Uploaded iris v1" in out and "v1 is ready" in out and "staging → v1" in out
    assert registered_model.aliases.get(name="staging").version.version == 1


def test_bad_upload_over_http_leaves_nothing(http, registered_model, model_files, shared_data_dir):
    before = sorted(p for p in (shared_data_dir / "artifacts").rglob("*") if p.is_file())
    response = upload(http, "iris", model_files["state_dict"], signature=SIGNATURE)
    assert response.status_code == 400
    assert "torch.save checkpoint" in response.json()["error"]
    assert not ModelVersion.objects.exists()
    assert sorted(p for p in (shared_data_dir / "artifacts").rglob("*") if p.is_file()) == before
