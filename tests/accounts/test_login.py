"""Signing in while the Redis that counts failed sign-ins is down, comes back and goes again."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from accounts import login_throttle
from core import redis as shared_redis
from tests.worker import free_port, redis_start

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


@pytest.fixture
def throttle_redis(settings: Any) -> Iterator[int]:
    """The throttle's Redis on a port where nothing listens yet (a test may start a server there)."""
    port = free_port()
    settings.INFERENCE_REDIS_URL = f"redis://127.0.0.1:{port}/0"
    settings.LOGIN_FAILURE_LIMIT = 2
    yield port
    shared_redis.reset()


def _sign_in(client: Client, password: str) -> int:
    return client.post(LOGIN, {"username": "olivia", "password": password}).status_code


def test_sign_in_works_and_is_not_throttled_while_redis_is_down(throttle_redis, owner, caplog):
    client = Client()
    with caplog.at_level(logging.WARNING, logger=login_throttle.__name__):
        # Failures are answered as failures (the form again), never as 500 or 429.
        assert [_sign_in(client, "wrong") for _ in range(5)] == [200] * 5
        assert _sign_in(client, "owner-pass-123") == 302
    assert "login throttle unavailable" in caplog.text
    assert client.get("/").status_code == 200


def test_sign_in_works_unthrottled_without_a_redis_configured(settings, owner, caplog):
    settings.INFERENCE_REDIS_URL = ""
    settings.LOGIN_FAILURE_LIMIT = 2
    client = Client()
    with caplog.at_level(logging.WARNING, logger=login_throttle.__name__):
        assert [_sign_in(client, "wrong") for _ in range(4)] == [200] * 4  # past the limit: nothing counts them
        assert _sign_in(client, "owner-pass-123") == 302
    assert "login throttle unavailable" in caplog.text


def test_throttling_resumes_when_redis_returns_and_sign_in_survives_it_going_again(
    throttle_redis, owner, tmp_path, processes
):
    client = Client()
    assert _sign_in(client, "wrong") == 200  # down: not counted
    server, _ = redis_start(processes, tmp_path / "redis", unix_socket=False, port=throttle_redis)
    # The same client reconnects: two failures reach the limit and the right password is refused.
    assert [_sign_in(client, "wrong") for _ in range(2)] == [200, 200]
    assert _sign_in(client, "owner-pass-123") == 429

    processes.stop(server)
    assert _sign_in(client, "owner-pass-123") == 302
