"""Access control against real processes: the /v2 gateway (uvicorn), the live web server, Redis."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from accounts import services as token_services
from registry import services
from registry.models import AuditEvent, RegisteredModel, Visibility
from tests.integration.conftest import auth, infer_json

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]

BODY = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


def _v2(gateway_url: str, secret: str, path: str) -> int:
    return requests.get(f"{gateway_url}/v2/models/{path}", headers=auth(secret), timeout=10).status_code


def test_v2_hides_models_the_caller_may_not_see_and_checks_roles_and_scopes(
    gateway_url, token, served, owner, member, outsider, registered_model
):
    stranger = token_services.token_create(user=outsider, name="s")[1]
    for path in ("iris", "iris/ready", "iris/versions/1", "iris/stats", "iris/versions/1/stats", "nonexistent"):
        assert _v2(gateway_url, stranger, path) == 404, path
    assert infer_json(gateway_url, stranger, "iris", BODY).status_code == 404

    services.role_grant(actor=owner, model=registered_model, role="viewer", username=member.username)
    viewer = token_services.token_create(user=member, name="v")[1]
    assert _v2(gateway_url, viewer, "iris") == 200
    assert _v2(gateway_url, viewer, "iris/stats") == 200
    refused = infer_json(gateway_url, viewer, "iris", BODY)
    assert refused.status_code == 403 and "predictions" in refused.json()["error"]

    read_only = token_services.token_create(user=owner, name="r", scopes=["read"])[1]
    assert _v2(gateway_url, read_only, "iris") == 200
    assert infer_json(gateway_url, read_only, "iris", BODY).status_code == 403
    other = services.model_create(actor=owner, name="other")
    elsewhere = token_services.token_create(user=owner, name="o", models=[other.name])[1]
    assert _v2(gateway_url, elsewhere, "iris") == 404
    assert _v2(gateway_url, elsewhere, "iris/stats") == 404
    assert infer_json(gateway_url, elsewhere, "iris", BODY).status_code == 404
    assert infer_json(gateway_url, token, "iris", BODY).status_code == 200


def test_a_publicly_predictable_model_answers_without_a_token_and_nothing_else_does(
    gateway_url, served, owner, registered_model
):
    def anonymous(path: str, body: dict | None = None) -> requests.Response:
        if body is None:
            return requests.get(f"{gateway_url}/v2/models/{path}", timeout=10)
        return requests.post(f"{gateway_url}/v2/models/{path}", json=body, timeout=20)

    for path in ("iris", "iris/ready", "nonexistent"):
        refused = anonymous(path)
        assert refused.status_code == 401 and "Authentication required" in refused.json()["error"], path
    assert anonymous("iris/infer", BODY).status_code == 401
    assert anonymous("nonexistent/infer", BODY).status_code == 401

    services.model_update(actor=owner, model=registered_model, visibility=Visibility.PUBLIC)
    answer = anonymous("iris/infer", BODY)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [1, 3]
    assert anonymous("iris").json()["name"] == "iris"
    assert anonymous("iris/stats").status_code == 401  # traffic figures need a sign-in

    # Private again: the gateway drops its cached route when the change is published.
    services.model_update(actor=owner, model=registered_model, visibility=Visibility.PRIVATE)
    deadline = time.monotonic() + 5
    while anonymous("iris/infer", BODY).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert anonymous("iris/infer", BODY).status_code == 401


def test_rate_limit_is_shared_by_the_gateway_and_the_web_process(gateway_url, live_server, owner, served):
    secret = token_services.token_create(user=owner, name="limited", rate_limit_per_minute=3)[1]
    unlimited = token_services.token_create(user=owner, name="free")[1]
    # The token's window opens with its first call and lasts a minute, whatever the clock
    # says: no boundary can fall between these calls, and each count is exact.
    first = time.monotonic()
    # Two predictions through the gateway process, one through the web (test) process...
    assert infer_json(gateway_url, secret, "iris", BODY).status_code == 200
    assert infer_json(gateway_url, secret, "iris", BODY).status_code == 200
    friendly_url = f"{live_server.url}/api/v1/models/iris/predict/"
    friendly = requests.post(
        friendly_url, json={"inputs": {"features": [1, 2, 3, 4]}}, headers=auth(secret), timeout=20
    )
    assert friendly.status_code == 200, friendly.text  # a 429 here would be a count taken twice
    # ...and the fourth is refused wherever it arrives, with a Retry-After.
    over = infer_json(gateway_url, secret, "iris", BODY)
    elapsed = time.monotonic() - first
    assert over.status_code == 429, (over.status_code, f"{elapsed:.1f}s after the first call")
    assert "Rate limit of 3" in over.json()["error"]
    # The window closes a minute after the first call counted (whole seconds, rounded up).
    assert 60 - elapsed <= int(over.headers["Retry-After"]) <= 60, (over.headers["Retry-After"], elapsed)
    web_over = requests.post(f"{live_server.url}/api/v1/models/iris/predict/",
                             json={"inputs": {"features": [1, 2, 3, 4]}}, headers=auth(secret), timeout=20)  # fmt: skip
    assert web_over.status_code == 429 and web_over.headers["Retry-After"]
    assert infer_json(gateway_url, unlimited, "iris", BODY).status_code == 200


def test_a_revoked_token_is_never_accepted_after_the_revocation_returned(gateway_url, owner, served):
    token, secret = token_services.token_create(user=owner, name="doomed")
    assert infer_json(gateway_url, secret, "iris", BODY).status_code == 200  # cached in the gateway now
    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def hammer() -> None:
        session = requests.Session()
        while not stop.is_set():
            sent = time.monotonic()
            response = session.post(f"{gateway_url}/v2/models/iris/infer", json=BODY, headers=auth(secret), timeout=20)
            results.append((sent, response.status_code))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    token_services.token_revoke(user=owner, token_id=token.pk)
    returned = time.monotonic()
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    before = [status for sent, status in results if sent < returned]
    after = [status for sent, status in results if sent > returned]
    assert 200 in before and after, (len(before), len(after))
    assert set(after) == {401}, sorted(set(after))


def test_ten_concurrent_promotions_leave_one_production_and_a_matching_audit_trail(
    live_server, owner, registered_model, ready_version
):
    for _ in range(10):
        ready_version()
    secret = token_services.token_create(user=owner, name="promoter")[1]

    def promote(number: int) -> int:
        return requests.put(f"{live_server.url}/api/v1/models/iris/aliases/production/", json={"version": number},
                            headers=auth(secret), timeout=30).status_code  # fmt: skip

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(promote, range(1, 11)))
    assert statuses == [200] * 10
    model = RegisteredModel.objects.get(pk=registered_model.pk)
    assert model.aliases.filter(name="production").count() == 1
    holder = model.aliases.get(name="production").version.version
    moves = list(AuditEvent.objects.filter(model=model, object_repr="production").order_by("created_at", "id"))
    assert len(moves) == 10
    # Each move starts where the previous one ended, and the last one is what holds now.
    assert moves[0].before == {"version": None}
    assert all(later.before == earlier.after for earlier, later in itertools.pairwise(moves))
    assert moves[-1].after == {"version": holder}
    assert sorted(event.after["version"] for event in moves) == list(range(1, 11))
    assert len({event.request_id for event in moves}) == 10 and all(event.request_id for event in moves)


def test_login_is_throttled_after_repeated_failures(broker_url, owner, member, settings, monkeypatch):
    from django.test import Client

    from accounts.login_throttle import KEY_PREFIX, ThrottledLoginView
    from core import redis as shared_redis

    now = [1_000_000.0]  # a stopped clock, moved by hand below
    monkeypatch.setattr(ThrottledLoginView, "clock", staticmethod(lambda: now[0]))
    client = Client()
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_FAILURE_WINDOW_SECONDS = 900
    # Counters of earlier runs on this Redis must not count here.
    redis = shared_redis.client()
    redis.delete(*redis.keys(f"{KEY_PREFIX}*") or ["none"])

    def sign_in(username: str, password: str) -> Any:
        return client.post("/accounts/login/", {"username": username, "password": password})

    for _ in range(3):
        assert sign_in("olivia", "wrong").status_code == 200
        now[0] += 100  # the window opened with the first failure
    blocked = sign_in("olivia", "owner-pass-123")
    assert blocked.status_code == 429 and blocked["Retry-After"] == "600"
    assert b"Too many failed sign-ins. Try again in 10 minutes." in blocked.content
    # Another account from the same address is not locked out by olivia's failures.
    assert sign_in("mark", "member-pass-123").status_code == 302
    client.logout()
    now[0] += 599.5
    assert sign_in("olivia", "owner-pass-123")["Retry-After"] == "1"
    now[0] += 0.5  # the window is over: the right password works again
    assert sign_in("olivia", "owner-pass-123").status_code == 302
