"""The bound on Django views per process (portal.concurrency), with a fake view: no server, no wall-clock waits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpResponse
from django.test import RequestFactory

from portal.concurrency import BoundedASGIHandler


@pytest.fixture
def view(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Django's views, replaced by one that answers 200 once the returned event is set."""
    release = asyncio.Event()

    async def run_get_response(self: Any, request: Any) -> HttpResponse:
        await release.wait()
        return HttpResponse("ok")

    monkeypatch.setattr(ASGIHandler, "run_get_response", run_get_response)
    return release


def test_past_the_running_and_waiting_bounds_a_request_is_refused_503_at_once(view):
    async def scenario() -> tuple[list[Any], Any]:
        handler = BoundedASGIHandler(limit=1, waiting=1, seconds=30)
        request = RequestFactory().get("/")
        running = asyncio.create_task(handler.run_get_response(request))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(handler.run_get_response(request))
        await asyncio.sleep(0)
        # One running, one waiting: no room (a handler that queued it would time out here).
        refused = await asyncio.wait_for(handler.run_get_response(request), 5)
        view.set()
        return [await running, await waiting], refused

    served, refused = asyncio.run(scenario())
    assert [response.status_code for response in served] == [200, 200]
    assert refused.status_code == 503 and refused["Retry-After"] == "1"
    assert refused["Content-Length"] == str(len(refused.content))
    assert "WEB_MAX_CONCURRENT_REQUESTS" in json.loads(refused.content)["error"]


def test_a_request_that_would_wait_longer_than_the_queue_allows_is_refused_at_once(view):
    async def scenario() -> Any:
        handler = BoundedASGIHandler(limit=1, waiting=100, seconds=2)
        handler.view_seconds = 1.5  # recent views took 1.5 s: one ahead and this one make 3 s > 2 s
        request = RequestFactory().get("/")
        running = asyncio.create_task(handler.run_get_response(request))
        await asyncio.sleep(0)
        first_waiting = asyncio.create_task(handler.run_get_response(request))
        await asyncio.sleep(0)
        refused = await asyncio.wait_for(handler.run_get_response(request), 5)
        view.set()
        await asyncio.gather(running, first_waiting)
        return refused

    assert asyncio.run(scenario()).status_code == 503


def test_a_full_server_refuses_from_the_request_line_without_reading_the_body(view):
    """The refusal goes out before the body is asked for (under overload, reading it was most of
    a refusal's time); a request arriving with room to wait still has its body read."""

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        handler = BoundedASGIHandler(limit=1, waiting=0, seconds=30)
        request = RequestFactory().get("/")
        running = asyncio.create_task(handler.run_get_response(request))
        await asyncio.sleep(0)
        reads = 0

        async def receive() -> dict[str, Any]:
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": b"{}" * 100_000, "more_body": False}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/api/v1/models/m/predict/", "headers": [],
                 "query_string": b"", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000)}  # fmt: skip
        await asyncio.wait_for(handler(scope, receive, send), 5)
        view.set()
        await running
        return sent, reads

    sent, reads = asyncio.run(scenario())
    assert reads == 0
    start, body = sent
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body["body"])
    assert "WEB_MAX_CONCURRENT_REQUESTS" in json.loads(body["body"])["error"]
