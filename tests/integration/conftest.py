"""Fixtures and helpers shared by the prediction integration tests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
import tritonclient.http as triton
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore

from accounts import services as token_services
from core import redis as shared_redis
from core.invalidation import INVALIDATE_CHANNEL
from registry import services
from registry.models import RegisteredModel
from tests.integration import thieves

FEATURES = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


@pytest.fixture
def token(owner: Any, gateway_url: str) -> str:
    # Earlier tests' rows are gone (flushed without signals): make every gateway forget them.
    shared_redis.client().publish(INVALIDATE_CHANNEL, "test")
    return token_services.token_create(user=owner, name="predict")[1]


@pytest.fixture
def served(owner: Any, registered_model: RegisteredModel, ready_version: Any) -> Any:
    version = ready_version(labels=["setosa", "versicolor", "virginica"])
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=version.version)
    return version


@pytest.fixture
def client(gateway_url: str, token: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(
        url=gateway_url.removeprefix("http://"), connection_timeout=10, network_timeout=20
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def session_headers(user: Any) -> dict[str, str]:
    """A signed-in browser's cookies and CSRF header, made here (the server's password hashers
    differ from the tests' fast one, so a sign-in form would refuse the test password). A server
    accepts them when it signs sessions with this process's SECRET_KEY."""
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    csrf = "c" * 32
    cookie = f"{settings.SESSION_COOKIE_NAME}={store.session_key}; {settings.CSRF_COOKIE_NAME}={csrf}"
    return {"Cookie": cookie, "X-CSRFToken": csrf}


def expected(model_files: dict[str, Path], features: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(model_files["torchscript"]))
    with torch.inference_mode():
        return module(torch.from_numpy(features)).numpy()


def infer_json(gateway_url: str, token: str, path: str, body: Any, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = auth(token) | kwargs.pop("headers", {})
    return requests.post(f"{gateway_url}/v2/models/{path}/infer", data=data, headers=headers, timeout=30, **kwargs)


def infer_json_when_loaded(gateway_url: str, token: str, path: str, body: Any) -> requests.Response:
    """`infer_json`, retried while the gateway answers 503 "loading": a model's first load (a
    torch.export one, on a busy machine) can outlast the test gateway's prediction timeout."""
    deadline = time.monotonic() + 90
    while True:
        response = infer_json(gateway_url, token, path, body)
        if response.status_code != 503 or "is loading" not in response.text or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def request_body(features: np.ndarray, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "features", "shape": list(features.shape), "datatype": "FP32", "data": features.ravel().tolist()}
    return {"inputs": [tensor], **extra}


@pytest.fixture
def secret_key_file(service_environment: dict[str, str]) -> Iterator[Path]:
    """The embedded secret key where the worker's settings keep it (PORTAL_DATA_DIR/secret_key)."""
    path = Path(service_environment["PORTAL_DATA_DIR"]) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.read_bytes() if path.exists() else None
    path.write_text(thieves.SECRET)
    yield path
    if previous is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(previous)
