"""Property-based fuzzing of the REST API from its own OpenAPI schema (schemathesis): no 500s.

Every operation gets a bounded number of generated requests (valid and invalid), sent over
HTTP to a live server as a signed-in owner with an all-scopes token. CI runs this with the
rest of the suite, once on SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from accounts import services as token_services

EXAMPLES_PER_OPERATION = 8

schema = schemathesis.openapi.from_dict(
    json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))
)


@pytest.fixture(autouse=True)
def _no_broker(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Predictions answer 503 at once: no request may outlive the test (its flush would wait)."""
    from core import redis as shared_redis

    shared_redis.reset()
    settings.INFERENCE_REDIS_URL = "redis://127.0.0.1:1/0"
    settings.INFERENCE_TIMEOUT_SECONDS = 2.0
    yield
    shared_redis.reset()


@pytest.fixture
def bearer(owner: Any, registered_model: Any, ready_version: Any) -> dict[str, str]:
    ready_version()
    secret = token_services.token_create(user=owner, name="fuzz", scopes=["read", "predict", "write", "admin"])[1]
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.django_db(transaction=True)
@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_no_operation_answers_500(case: Any, live_server: Any, bearer: dict[str, str]) -> None:
    case.call_and_validate(base_url=live_server.url, headers=bearer, checks=[not_a_server_error], timeout=20)
