"""The friendly /api/v1 predict endpoint, through Django and a real worker process."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import requests
import torch

from accounts import services as token_services
from registry import services
from tests.conftest import upload_file

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def http(live_server: Any, owner: Any, worker: Any, registered_model: Any, ready_version: Any) -> requests.Session:
    version = ready_version(labels=["setosa", "versicolor", "virginica"])
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=version.version)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token_services.token_create(user=owner, name='p')[1]}"
    session.base_url = f"{live_server.url}/api/v1/models"  # type: ignore[attr-defined]
    return session


def post(http: requests.Session, path: str, body: Any) -> requests.Response:
    return http.post(f"{http.base_url}/{path}", json=body, timeout=30)


def test_predict_with_nested_lists_and_labels(http, model_files):
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    response = post(http, "iris/predict/", {"inputs": {"features": rows}})
    assert response.status_code == 200, response.text
    body = response.json()
    module = torch.jit.load(str(model_files["torchscript"]))
    want = module(torch.tensor(rows)).detach().numpy()
    np.testing.assert_allclose(np.array(body["outputs"]["output__0"]), want, atol=1e-5)
    assert body["labels"] == [["setosa", "versicolor", "virginica"][i] for i in want.argmax(axis=1)]
    assert (body["model"], body["version"]) == ("iris", 1)
    assert body["timing"]["total_ms"] > 0

    single = post(http, "iris/predict/?version=1", {"inputs": {"features": rows[0]}})
    assert single.status_code == 200 and len(single.json()["outputs"]["output__0"]) == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("iris/predict/", {"inputs": {}}, 400, "Missing input 'features'"),
        ("iris/predict/", {"inputs": {"features": [1, 2, 3]}}, 400, "features"),
        ("iris/predict/", {"inputs": {"features": [[1, 2, 3, 4]], "x": [1]}}, 400, "Unknown input"),
        ("iris/predict/", {"inputs": {"features": [[1, 2], [1, 2, 3]]}}, 400, "ragged"),
        ("iris/predict/", {"inputs": [1, 2]}, 400, "must be an object"),
        ("iris/predict/?alias=staging", {"inputs": {"features": [1, 2, 3, 4]}}, 404, "no alias 'staging'"),
        ("nope/predict/", {"inputs": {"features": [1, 2, 3, 4]}}, 404, "not found"),
    ],
)
def test_predict_errors_name_the_problem(http, path, body, status, fragment):
    response = post(http, path, body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_predict_on_a_version_that_is_not_ready_is_503(http, owner, registered_model, model_files):
    pending = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    response = post(http, f"iris/predict/?version={pending.version}", {"inputs": {"features": [1, 2, 3, 4]}})
    assert response.status_code == 503 and "pending" in response.json()["error"]
