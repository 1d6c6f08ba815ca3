"""The ASGI entry point refuses oversized bodies before reading them."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from portal.asgi import BodySizeLimit


def run(app: BodySizeLimit, headers: list[tuple[bytes, bytes]]) -> tuple[list[dict[str, Any]], bool]:
    sent: list[dict[str, Any]] = []
    reached = False

    async def inner(scope, receive, send):
        nonlocal reached
        reached = True

    async def receive():
        raise AssertionError("the body must not be read")

    async def send(message):
        sent.append(message)

    app.app = inner
    # A thread of its own: another test's browser may keep an event loop in this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, app({"type": "http", "headers": headers}, receive, send)).result()
    return sent, reached


def test_declared_body_over_the_limit_is_413_without_reading():
    app = BodySizeLimit(None, limit=1000, message="too big")
    sent, reached = run(app, [(b"content-length", b"1001")])
    assert not reached
    assert sent[0]["status"] == 413
    assert sent[1]["body"] == b'{"error": "too big", "code": "too_large"}'


def test_bodies_within_the_limit_or_without_length_pass_through():
    app = BodySizeLimit(None, limit=1000, message="too big")
    assert run(app, [(b"content-length", b"1000")]) == ([], True)
    assert run(app, []) == ([], True)
