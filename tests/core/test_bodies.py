"""core.bodies.BodyLimit in front of Django: refused before reading, chunked bodies counted and framed."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.bodies import BodyLimit

UPLOAD = (b"content-type", b"multipart/form-data; boundary=x")
CHUNKED = (b"transfer-encoding", b"chunked")


def run(headers: list[tuple[bytes, bytes]], chunks: list[bytes] | None = None, limit: int = 1000) -> dict[str, Any]:
    """Send one request through BodyLimit; what the inner app saw and what went back."""
    seen: dict[str, Any] = {"sent": [], "reached": False, "read": 0}
    pending = list(chunks or [])

    async def inner(scope, receive, send):
        seen["reached"] = True
        seen["headers"] = dict(scope["headers"])
        if chunks is not None:
            seen["body"] = (await receive())["body"]

    async def receive():
        if chunks is None:
            raise AssertionError("the body must not be read")
        seen["read"] += 1
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        seen["sent"].append(message)

    app = BodyLimit(inner, upload_limit=limit, upload_message="upload too big")
    # A thread of its own: another test's browser may keep an event loop in this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, app({"type": "http", "headers": headers}, receive, send)).result()
    return seen


def test_a_declared_upload_over_its_limit_is_413_without_reading():
    seen = run([UPLOAD, (b"content-length", b"1001")])
    assert not seen["reached"]
    assert seen["sent"][0]["status"] == 413 and (b"connection", b"close") in seen["sent"][0]["headers"]
    assert seen["sent"][1]["body"] == b'{"error": "upload too big", "code": "too_large"}'


def test_a_declared_json_body_over_data_upload_max_memory_size_is_413_without_reading(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    seen = run([(b"content-type", b"application/json"), (b"content-length", b"2049")], limit=10**9)
    assert not seen["reached"] and seen["sent"][0]["status"] == 413
    assert b"DATA_UPLOAD_MAX_MEMORY_SIZE" in seen["sent"][1]["body"]


def test_bodies_within_the_limit_or_without_one_pass_through_untouched():
    assert run([UPLOAD, (b"content-length", b"1000")])["sent"] == []
    seen = run([])
    assert seen["reached"] and seen["sent"] == []


def test_a_chunked_json_body_reaches_django_whole_with_its_content_length(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    seen = run([(b"content-type", b"application/json"), CHUNKED], chunks=[b'{"name":', b' "chunky"}'])
    assert seen["body"] == b'{"name": "chunky"}'
    assert seen["headers"][b"content-length"] == b"18" and b"transfer-encoding" not in seen["headers"]


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    seen = run([CHUNKED], chunks=[b"x" * 1024] * 10)
    assert not seen["reached"] and seen["sent"][0]["status"] == 413
    assert seen["read"] == 3  # stopped at the chunk that passed 2048 bytes, seven never read


def test_a_chunked_upload_is_411_without_reading():
    seen = run([UPLOAD, CHUNKED])
    assert not seen["reached"] and seen["sent"][0]["status"] == 411
    assert b"Content-Length" in seen["sent"][1]["body"]
