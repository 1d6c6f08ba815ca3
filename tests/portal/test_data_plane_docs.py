"""The API docs page documents the data plane (/v2 and /v1) beside the REST API."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.django_db


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def test_schema_documents_the_oip_and_openai_endpoints(client, owner):
    client.force_login(owner)
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    paths = schema["paths"]
    for path in ("/v2", "/v2/health/ready", "/v2/models/{name}/versions/{version}/infer", "/v2/models/{name}/stats",
                 "/v1/models", "/v1/embeddings", "/v1/completions", "/v1/chat/completions"):  # fmt: skip
        assert path in paths, path
    assert "/api/v1/models/" in paths  # the REST API is still there
    assert paths["/v1/chat/completions"]["post"]["tags"] == ["Data plane: OpenAI-compatible"]
    # Every reference resolves, and every operation has its own id.
    schemas = schema["components"]["schemas"]
    for ref in _refs(schema):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    ids = [op["operationId"] for item in paths.values() for op in item.values() if isinstance(op, dict)]
    assert len(ids) == len(set(ids))
    assert "bearerAuth" in schema["components"]["securitySchemes"]
