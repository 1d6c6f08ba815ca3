"""Sign-in throttling when its Redis is away: sign-ins keep working, unthrottled and logged."""

from __future__ import annotations

import logging

import pytest
from django.test import Client

from core import redis as shared_redis

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["redis://127.0.0.1:1/0", ""], ids=["down", "unconfigured"])
def no_redis(request, settings):
    settings.INFERENCE_REDIS_URL = request.param
    settings.LOGIN_FAILURE_LIMIT = 2
    yield
    shared_redis.reset()


def test_sign_in_works_unthrottled_without_redis(no_redis, owner, caplog):
    client = Client()
    with caplog.at_level(logging.WARNING, logger="accounts.login_throttle"):
        for _ in range(4):  # past the limit: nothing counts them
            assert client.post("/accounts/login/", {"username": "olivia", "password": "wrong"}).status_code == 200
        assert client.post("/accounts/login/", {"username": "olivia", "password": "owner-pass-123"}).status_code == 302
    assert "login throttle unavailable" in caplog.text
