"""The friendly predict endpoint answers a token caller alike from the gateway's event loop
(inference.api.predict_asgi, under uvicorn) and from its Django view (the live server's WSGI):
the same statuses, bodies and headers for good requests and for every kind of bad one.

Which path answered is told by a header only Django's middleware adds (X-Frame-Options): the
event-loop path sends none, and a request it leaves to Django carries it.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import requests
from django.conf import settings

from accounts import services as token_services
from accounts.models import ApiToken
from monitoring.models import MetricBucket
from registry.models import AuditEvent, ModelVersion
from tests.integration.conftest import FEATURES, auth
from tests.integration.friendly import DJANGO_ONLY_HEADER, ask, assert_alike, both

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]

ROWS = FEATURES.tolist()


@pytest.fixture
def iris(served: ModelVersion, owner: Any, token: str) -> ModelVersion:
    """The served iris (labels, production alias), with max_batch_size 2, warm on the worker."""
    ModelVersion.objects.filter(pk=served.pk).update(max_batch_size=2)
    # The session gateway may hold the old route: every gateway forgets it.
    from core import redis as shared_redis
    from core.invalidation import INVALIDATE_CHANNEL

    shared_redis.client().publish(INVALIDATE_CHANNEL, "test")
    return served


CASES = [
    ("iris/predict/", {"inputs": {"features": ROWS}}),
    ("iris/predict/?version=1", {"inputs": {"features": ROWS[0]}}),
    ("iris/predict/?alias=production", {"inputs": {"features": ROWS}, "extra": "ignored"}),
    ("iris/predict/", {"inputs": {}}),
    ("iris/predict/", {"inputs": {"features": [1, 2, 3]}}),
    ("iris/predict/", {"inputs": {"features": [[1, 2, 3, 4]], "x": [1]}}),
    ("iris/predict/", {"inputs": {"features": [[1, 2], [1, 2, 3]]}}),
    ("iris/predict/", {"inputs": {"features": [["a", "b", "c", "d"]]}}),
    ("iris/predict/", {"inputs": [1, 2]}),
    ("iris/predict/", {"inputs": None}),
    ("iris/predict/", {"parameters": {}}),
    ("iris/predict/", [1, 2]),
    ("iris/predict/", b"{not json"),
    ("iris/predict/", b""),
    ("iris/predict/", b"[" * 40 + b"]" * 40),
    ("iris/predict/", {"inputs": {"features": ROWS + ROWS[:1]}}),  # 3 rows > max_batch_size 2
]


@pytest.mark.parametrize(("path", "body"), CASES)
def test_a_token_caller_gets_the_views_answer_from_the_event_loop(iris, token, gateway_url, live_server, path, body):
    fast, view = both(gateway_url, live_server, path, body, auth(token))
    assert DJANGO_ONLY_HEADER not in fast.headers, fast.headers  # answered by the event-loop path
    assert_alike(fast, view)
    if fast.status_code == 200:
        np.testing.assert_allclose(fast.json()["outputs"]["output__0"], view.json()["outputs"]["output__0"], rtol=1e-6)
        assert fast.json()["timing"]["total_ms"] > 0 and fast.json()["timing"]["worker"]


DELEGATED = [
    ("iris/predict/?alias=staging", {"inputs": {"features": ROWS}}),  # no such alias
    ("nope/predict/", {"inputs": {"features": ROWS}}),  # no such model
    ("iris/predict/?version=7", {"inputs": {"features": ROWS}}),
    ("iris/predict/?version=1&alias=production", {"inputs": {"features": ROWS}}),
    ("iris/predict/?version=one", {"inputs": {"features": ROWS}}),
    ("iris/predict/?page=2", {"inputs": {"features": ROWS}}),  # ignored by the view: a 200
]


@pytest.mark.parametrize(("path", "body"), DELEGATED)
def test_what_the_event_loop_would_answer_differently_is_left_to_the_view(
    iris, token, gateway_url, live_server, path, body
):
    fast, view = both(gateway_url, live_server, path, body, auth(token))
    assert fast.headers.get(DJANGO_ONLY_HEADER) == "DENY", fast.headers  # Django answered
    assert_alike(fast, view)


def test_bad_tokens_scopes_and_other_callers_answer_alike(iris, owner, outsider, token, gateway_url, live_server):
    body = {"inputs": {"features": ROWS}}
    # A wrong token is answered by the event loop (the gateway counts it for the bad-token throttle).
    fast, view = both(gateway_url, live_server, "iris/predict/", body, auth("mp_nope_0123456789"))
    assert fast.status_code == 401 and DJANGO_ONLY_HEADER not in fast.headers
    assert_alike(fast, view)
    assert fast.headers["WWW-Authenticate"] == "Bearer"

    # A token without the predict scope: the view answers, and audits the refusal.
    read_only = token_services.token_create(user=owner, name="reader", scopes=["read"])[1]
    before = AuditEvent.objects.count()
    fast, view = both(gateway_url, live_server, "iris/predict/", body, auth(read_only))
    assert fast.status_code == 403 and fast.headers.get(DJANGO_ONLY_HEADER) == "DENY"
    assert_alike(fast, view)
    assert AuditEvent.objects.count() == before + 2  # one per path

    # A user with no role on the private model sees no model at all.
    stranger = token_services.token_create(user=outsider, name="stranger")[1]
    fast, view = both(gateway_url, live_server, "iris/predict/", body, auth(stranger))
    assert fast.status_code == 404
    assert_alike(fast, view)

    # Not JSON, or HTML wanted: Django's parsers and negotiation answer.
    form = requests.post(f"{gateway_url}/api/v1/models/iris/predict/", data={"inputs": "x"}, headers=auth(token),
                         timeout=30)  # fmt: skip
    assert form.status_code == 400 and form.headers.get(DJANGO_ONLY_HEADER) == "DENY"


def test_a_rate_limited_token_is_refused_alike_with_retry_after(iris, owner, gateway_url, live_server):
    limited = token_services.token_create(user=owner, name="limited", rate_limit_per_minute=2)
    secret = limited[1]
    body = {"inputs": {"features": ROWS}}
    answers = [ask(gateway_url, "iris/predict/", body, auth(secret)) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429], [a.text for a in answers]
    view = ask(live_server.url, "iris/predict/", body, auth(secret))
    assert view.status_code == 429
    fast, view = answers[-1], view
    assert fast.json()["code"] == view.json()["code"] == "rate_limited"
    assert fast.headers["Retry-After"].isdigit() and view.headers["Retry-After"].isdigit()
    assert ApiToken.objects.filter(pk=limited[0].pk).exists()


def test_an_oversized_body_is_refused_413(iris, token, gateway_url, live_server):
    rows = [[1.0, 2.0, 3.0, 4.0]] * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 16)
    fast, view = both(gateway_url, live_server, "iris/predict/", {"inputs": {"features": rows}}, auth(token))
    assert fast.status_code == 413 and DJANGO_ONLY_HEADER not in fast.headers
    assert_alike(fast, view)


def test_the_event_loops_predictions_are_counted_in_the_serving_metrics(iris, token, gateway_url):
    ask(gateway_url, "iris/predict/", {"inputs": {"features": ROWS}}, auth(token)).raise_for_status()
    assert ask(gateway_url, "iris/predict/", {"inputs": {}}, auth(token)).status_code == 400
    # The gateway flushes its aggregates every second (METRICS_FLUSH_SECONDS=1 in the tests).
    deadline = time.monotonic() + 20
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = {}
        for bucket in MetricBucket.objects.filter(version=iris, source="native"):
            for status, count in bucket.status_counts.items():
                counts[status] = counts.get(status, 0) + count
        if counts.get("200") and counts.get("400"):
            break
        time.sleep(0.25)
    assert counts.get("200") == 1 and counts.get("400") == 1, counts
