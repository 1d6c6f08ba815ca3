"""The demo traffic of `make run`: restarts on an existing data directory, timeouts on a busy machine."""

from __future__ import annotations

import urllib.request

import pytest

from accounts.models import ApiToken
from portal import demo_monitoring

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_sleep(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(demo_monitoring.time, "sleep", slept.append)
    return slept


def test_a_second_run_creates_its_own_token_and_revokes_it(admin_user, no_sleep, monkeypatch):
    def silent(*args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(demo_monitoring.urllib.request, "urlopen", silent)
    clock = iter(["2026-12-02 10:00:00", "2026-12-02 10:05:00"])
    monkeypatch.setattr(demo_monitoring.time, "strftime", lambda _: next(clock))
    for _ in range(2):  # the first run's token name used to make the second one fail (409)
        assert (
            demo_monitoring.demo_traffic("http://127.0.0.1:9/", admin_user, requests_per_model=1, ready_timeout=0) == 0
        )
    tokens = ApiToken.objects.filter(user=admin_user, name__startswith="demo traffic")
    assert tokens.count() == 2 and all(token.revoked_at is not None for token in tokens)


def test_a_timeout_is_retried_with_backoff_before_giving_up(no_sleep, monkeypatch):
    calls: list[int] = []

    class Answer:
        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("timed out")
        return Answer()

    monkeypatch.setattr(demo_monitoring.urllib.request, "urlopen", flaky)
    request = urllib.request.Request("http://127.0.0.1:9/v2/models/x/infer", b"{}")
    assert demo_monitoring.traffic_send(request, "http://127.0.0.1:9/") is True
    assert len(calls) == 3 and no_sleep == [1, 2]

    calls.clear()
    no_sleep.clear()
    monkeypatch.setattr(demo_monitoring.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    assert demo_monitoring.traffic_send(request, "http://127.0.0.1:9/") is False
    assert no_sleep == [1, 2, 4, 8]
