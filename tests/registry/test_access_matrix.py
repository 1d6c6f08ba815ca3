"""Every cell of the role x action and scope x request matrices in docs/access.md, over the REST API.

The expected answers are read from the document itself, so the table and the behaviour
cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from accounts import services as token_services
from monitoring import services as monitoring_services
from registry import services
from registry.models import RegisteredModel, Visibility
from tests.conftest import multipart
from tests.monitoring.conftest import npz_file

DOC = Path(__file__).resolve().parents[2] / "docs" / "access.md"
API = "/api/v1/models/iris"


def _table(heading: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The markdown table under `heading`: its action columns and {row: {column: cell}}."""
    text = DOC.read_text().split(heading, 1)[1]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, body = rows[0], [row for row in rows[2:] if not re.match(r"^-+$", row[0])]
    end = next((i for i, row in enumerate(body) if len(row) != len(header)), len(body))
    return header[1:], {row[0]: dict(zip(header[1:], row[1:], strict=True)) for row in body[:end]}


ROLE_ACTIONS, ROLE_MATRIX = _table("## Role by action matrix")
SCOPE_ACTIONS, SCOPE_MATRIX = _table("## Token scope by request matrix")


def test_the_documented_matrices_are_complete():
    assert len(ROLE_MATRIX) == 11 and len(SCOPE_MATRIX) == 4
    assert all(
        set(cells.values()) <= {"yes", "403", "404"} for cells in [*ROLE_MATRIX.values(), *SCOPE_MATRIX.values()]
    )


@pytest.fixture(autouse=True)
def _no_broker(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Allowed predictions answer 503 at once (no broker) rather than wait for a worker."""
    from core import redis as shared_redis

    shared_redis.reset()
    settings.INFERENCE_REDIS_URL = "redis://127.0.0.1:1/0"
    yield
    shared_redis.reset()


@pytest.fixture
def three_versions(owner: Any, registered_model: RegisteredModel, ready_version: Callable[..., Any]) -> RegisteredModel:
    """v1 holds production, v2 is free to promote, v3 free to delete; a labelled dataset to evaluate on."""
    for _ in range(3):
        ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    features = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    holdout = npz_file("holdout.npz", features=features, labels=np.array([0, 1, 2, 0, 1, 2]))
    monitoring_services.dataset_create(actor=owner, model=registered_model, name="holdout", file=holdout,
                                       filename="holdout.npz")  # fmt: skip
    return registered_model


def _perform(client: APIClient, action: str, model_files: dict[str, Path]) -> int:
    """Do one matrix action; the HTTP status it got."""
    if action == "view":
        return client.get(f"{API}/").status_code
    if action == "predict":
        body = {"inputs": {"features": [5.1, 3.5, 1.4, 0.2]}}
        return client.post(f"{API}/predict/", body, format="json").status_code
    if action == "download":
        return client.get(f"{API}/versions/1/download/").status_code
    if action == "upload":
        data = multipart(model_files["torchscript"], signature={"inputs": [{"name": "features", "datatype": "FP32",
                                                                            "shape": [-1, 4]}]})  # fmt: skip
        return client.post(f"{API}/versions/", data, format="multipart").status_code
    if action == "move alias":
        return client.put(f"{API}/aliases/staging/", {"version": 2}, format="json").status_code
    if action == "move production":
        return client.put(f"{API}/aliases/production/", {"version": 2}, format="json").status_code
    if action == "evaluate":
        body = {"model": "iris", "version": 2, "dataset": "holdout"}
        return client.post("/api/v1/evaluations/", body, format="json").status_code
    if action == "set gate":
        # On an alias no other column moves, so the gate cannot refuse a later action.
        return client.put(f"{API}/gate/", {"dataset": "holdout", "alias": "canary"}, format="json").status_code
    if action == "delete version":
        return client.delete(f"{API}/versions/3/").status_code
    if action == "manage roles":
        return client.post(f"{API}/roles/", {"group": "auditors", "role": "viewer"}, format="json").status_code
    if action == "delete model":  # the model serves under aliases: forced (the 409 is tested elsewhere)
        return client.delete(f"{API}/?force=true").status_code
    if action == "create token":
        return client.post("/api/v1/tokens/", {"name": "made-by-token"}, format="json").status_code
    raise AssertionError(action)


def _answer(status: int, action: str) -> str:
    if status in (403, 404):
        return str(status)
    # Allowed: the request got past authorisation. The predict endpoint has no broker here
    # (see _no_broker), so an allowed prediction answers 503 from the broker, never 403/404.
    assert status < 400 or (action == "predict" and status == 503), status
    return "yes"


def _setup_caller(row: str, model: RegisteredModel, owner: Any, member: Any, admin_user: Any) -> Any:
    if row == "creator":
        return owner
    if row == "staff":
        return admin_user
    if row.startswith("signed-in"):
        services.model_update(
            actor=owner, model=model, visibility=Visibility.INTERNAL if "internal" in row else Visibility.PUBLIC
        )
        return member
    if row == "no role (private model)":
        return member
    if row == "viewer via a group":
        group = Group.objects.create(name="readers")
        member.groups.add(group)
        services.role_grant(actor=owner, model=model, role="viewer", group="readers")
        return member
    role = {"owner (granted)": "owner", "maintainer with promote rights": "maintainer"}.get(row, row)
    services.role_grant(actor=owner, model=model, role=role, username=member.username, can_promote="promote" in row)
    return member


@pytest.mark.parametrize("row", list(ROLE_MATRIX))
def test_role_matrix_row(row, three_versions, owner, member, admin_user, model_files, api):
    Group.objects.get_or_create(name="auditors")
    caller = _setup_caller(row, three_versions, owner, member, admin_user)
    client = api(caller)
    got = {action: _answer(_perform(client, action, model_files), action) for action in ROLE_ACTIONS}
    assert got == ROLE_MATRIX[row]


@pytest.mark.parametrize("scope", list(SCOPE_MATRIX))
def test_scope_matrix_row(scope, three_versions, owner, model_files):
    Group.objects.get_or_create(name="auditors")
    secret = token_services.token_create(user=owner, name=f"only-{scope}", scopes=[scope])[1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    got = {action: _answer(_perform(client, action, model_files), action) for action in SCOPE_ACTIONS}
    assert got == SCOPE_MATRIX[scope]


def test_a_token_restricted_to_other_models_finds_nothing_here(three_versions, owner, model_files):
    other = services.model_create(actor=owner, name="other")
    secret = token_services.token_create(user=owner, name="other-only", models=[other.name])[1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    for action in ("view", "predict", "upload", "move production"):
        assert _perform(client, action, model_files) == 404, action
    assert [m["name"] for m in client.get("/api/v1/models/").json()["results"]] == ["other"]
