"""Asking the friendly predict endpoint the same thing on its two paths: the gateway's event loop
(uvicorn) and the Django view (the live server), and holding their answers to each other."""

from __future__ import annotations

import json
from typing import Any

import requests

DJANGO_ONLY_HEADER = "X-Frame-Options"


def ask(base: str, path: str, body: Any, headers: dict[str, str]) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **headers}
    return requests.post(f"{base}/api/v1/models/{path}", data=data, headers=headers, timeout=30)


def both(gateway_url: str, live_server: Any, path: str, body: Any, headers: dict[str, str]) -> tuple[Any, Any]:
    """The same request answered by the event-loop path (the gateway) and by the view (the live server)."""
    return ask(gateway_url, path, body, headers), ask(live_server.url, path, body, headers)


def assert_alike(fast: requests.Response, view: requests.Response) -> None:
    assert fast.status_code == view.status_code, (fast.text, view.text)
    fast_body, view_body = fast.json(), view.json()
    fast_body.pop("timing", None), view_body.pop("timing", None)
    assert fast_body == view_body
    for header in ("Content-Type", "Retry-After", "WWW-Authenticate", "X-Content-Type-Options"):
        assert fast.headers.get(header) == view.headers.get(header), header
    assert fast.headers["X-Request-ID"]
