"""Hardening: security headers and CSP, request id, JSON limits of the REST API."""

from __future__ import annotations

import json
from typing import Any

from core.parsers import MAX_JSON_DEPTH


def test_pages_send_a_strict_content_security_policy_and_frame_denial(client, owner):
    client.force_login(owner)
    response = client.get("/")
    policy = response["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["script-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert response["X-Frame-Options"] == "DENY" and response["X-Content-Type-Options"] == "nosniff"
    assert len(response["X-Request-ID"]) == 32


def test_api_docs_load_without_inline_scripts(client, owner):
    client.force_login(owner)
    page = client.get("/api/v1/docs/").content.decode()
    assert "<script>" not in page.replace(" ", "") and "<script src=" in page


def test_rest_api_refuses_deep_and_oversized_json_with_400_and_413(api, owner, settings: Any):
    client = api(owner)
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    response = client.post("/api/v1/models/", data=deep, content_type="application/json")
    assert response.status_code == 400 and "nested deeper" in response.json()["error"]
    very_deep = "[" * 100_000 + "]" * 100_000  # past Python's recursion limit: never a 500
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024**2
    assert client.post("/api/v1/models/", data=very_deep, content_type="application/json").status_code == 400
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    big = json.dumps({"name": "x", "description": "d" * 2000})
    response = client.post("/api/v1/models/", data=big, content_type="application/json")
    assert response.status_code == 413 and "limit of 1024 bytes" in response.json()["error"], response.content
    bad = client.post("/api/v1/models/", data="{nope", content_type="application/json")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
