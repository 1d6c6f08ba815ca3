"""Admission control against real processes: a slow model, a full queue, deadlines, row limits, connections.

The gateway processes here are private uvicorn servers of `portal.asgi` (Django + /v2), started
with small limits in their environment; the session's worker process serves them.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from django.conf import settings
from django.db import connection

from inference import validation
from registry import services
from registry.models import ModelVersion
from tests.conftest import upload_file
from tests.integration.conftest import FEATURES, auth, request_body, session_headers
from tests.worker import start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]

SLOW_SECONDS = 0.3


class Slow(torch.nn.Module):
    """Takes about the same time whatever the batch: `iterations` small matrix products, then a row sum."""

    def __init__(self, iterations: int) -> None:
        super().__init__()
        self.iterations = iterations
        self.weight = torch.nn.Parameter(torch.randn(192, 192) * 0.05)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        state = torch.eye(192)
        for _ in range(self.iterations):
            state = torch.tanh(state @ self.weight)
        return features.sum(dim=1, keepdim=True) + state.sum() * 0.0


@pytest.fixture(scope="session")
def slow_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TorchScript model taking at least about SLOW_SECONDS per forward on one thread (calibrated here).

    On a busy machine it takes longer: the tests below hold whatever its speed.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probe = torch.jit.script(Slow(50))
        times = []
        for _ in range(5):  # the first runs profile and optimise the graph: the fastest is the forward
            started = time.perf_counter()
            probe(torch.ones(1, 4))
            times.append(time.perf_counter() - started)
        per_iteration = min(times) / 50
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("slow") / "slow.pt"
    torch.jit.save(torch.jit.script(Slow(max(1, round(SLOW_SECONDS / per_iteration)))), str(path))
    return path


@pytest.fixture
def slow(owner: Any, slow_file: Path) -> ModelVersion:
    """Model `slow` (production: v1), one row per forward so requests are served one after another."""
    model = services.model_create(actor=owner, name="slow")
    version = upload_file(owner, model, slow_file, enqueue=False)
    assert validation.version_validate(version.pk) == "ready"
    ModelVersion.objects.filter(pk=version.pk).update(max_batch_size=1)
    services.alias_set(actor=owner, model=model, name="production", version_number=version.version)
    return ModelVersion.objects.get(pk=version.pk)


def burst(
    url: str, token: str, count: int, body: Any, headers: dict[str, str] | None = None
) -> list[tuple[int, float, str | None, str]]:
    """`count` concurrent POSTs with the token (or `headers`): (status, seconds, Retry-After, body) of each."""
    gate = threading.Barrier(count)
    headers = headers or auth(token)

    def one(_: int) -> tuple[int, float, str | None, str]:
        gate.wait()
        started = time.monotonic()
        response = requests.post(url, json=body, headers=headers, timeout=30)
        return response.status_code, time.monotonic() - started, response.headers.get("Retry-After"), response.text

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def private_gateway(processes: Any, service_environment: dict[str, str], log: Path, **env: str) -> str:
    return start_gateway(processes, service_environment | env, log)[1]


ONE_ROW = request_body(FEATURES[:1])
LIMITS = ("INFERENCE_MAX_QUEUED", "INFERENCE_TIMEOUT_SECONDS", "WEB_MAX_CONCURRENT_REQUESTS")


@pytest.mark.parametrize(
    ("endpoint", "caller"),
    [("/v2/models/slow/infer", "token"), ("/api/v1/models/slow/predict/", "token"),
     ("/api/v1/models/slow/predict/", "session")],
)  # fmt: skip
def test_excess_requests_get_503_with_retry_after_at_once_and_admitted_ones_finish_in_time(
    endpoint, caller, slow, owner, token, processes, service_environment, shared_data_dir
):
    # A session signed here is valid on a server with this process's SECRET_KEY.
    url = private_gateway(processes, service_environment, shared_data_dir / "gateway-admission.log",
                          INFERENCE_MAX_QUEUED="3", INFERENCE_TIMEOUT_SECONDS="4",
                          SECRET_KEY=settings.SECRET_KEY)  # fmt: skip
    body = ONE_ROW if endpoint.startswith("/v2") else {"inputs": {"features": FEATURES[0].tolist()}}
    # A token's friendly prediction is answered in the event loop, as /v2 is; a session's by the view.
    headers = session_headers(owner) if caller == "session" else auth(token)
    warm = requests.post(url + endpoint, json=body, headers=headers, timeout=30)
    assert warm.status_code == 200, warm.text

    answers = burst(url + endpoint, token, 30, body, headers)

    statuses = [status for status, _, _, _ in answers]
    assert set(statuses) <= {200, 503}, answers
    refused = [answer for answer in answers if answer[0] == 503]
    admitted = [answer for answer in answers if answer[0] == 200]
    # At most 3 waiting or running at once (fewer when the recent forward times say a 4th would be
    # late), each forward 0.3 s or more: most of a burst of 30 is refused, at once.
    assert len(refused) >= 15 and len(admitted) >= 1, statuses
    for _, seconds, retry_after, text in refused:
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, text
        # The model's queue is full, a new request would be late, or (friendly endpoint) Django's line is.
        assert any(name in text for name in LIMITS), text
        # Refused at once, not after waiting for the slow model (30 x 0.3 s or more) or the 4 s deadline.
        # Generous for a loaded 2-core machine; a session's friendly prediction is authenticated in
        # a Django view (a database connection and queries) before it can be refused.
        assert seconds < (2.5 if caller == "session" else 1.0), (seconds, text)
    assert max(seconds for _, seconds, _, _ in admitted) < 4 + 0.5


def test_the_deadline_covers_the_wait_in_the_gateways_queue(
    slow, token, gateway_url, processes, service_environment, shared_data_dir
):
    # The model is loaded on the worker through the session's gateway: this gateway's queue has no history.
    assert requests.post(f"{gateway_url}/v2/models/slow/infer", json=ONE_ROW, headers=auth(token),
                         timeout=30).status_code == 200  # fmt: skip
    url = private_gateway(processes, service_environment, shared_data_dir / "gateway-deadline.log",
                          INFERENCE_MAX_QUEUED="100", INFERENCE_TIMEOUT_SECONDS="2")  # fmt: skip

    answers = burst(f"{url}/v2/models/slow/infer", token, 30, ONE_ROW)

    statuses = [status for status, _, _, _ in answers]
    # Served one by one, at about 0.3 s or more each: the first ones in time, the rest past a 2 s
    # deadline. Before the deadline covered the queue, each got 2 s from when it was sent: the last
    # was answered after 30 forwards (9 s or more). (The slack: 30 client threads on a busy machine.)
    # (Late arrivals of the burst may be refused 503 instead: by then the queue's expected wait is known.)
    assert 504 in statuses and set(statuses) <= {200, 503, 504}, answers
    assert max(seconds for _, seconds, _, _ in answers) < 2 + 2.0, answers
    late = [text for status, _, _, text in answers if status == 504]
    assert any("was not sent" in text for text in late), late


def _partial_request(url: str, path: str, token: str, body: bytes) -> socket.socket:
    """A POST whose headers and first half of its body are sent; the rest is never sent."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    sock.sendall(head.encode() + body[: len(body) // 2])
    return sock


@pytest.mark.parametrize("endpoint", ["/v2/models/iris/infer", "/api/v1/models/iris/predict/"])
def test_a_request_still_being_read_holds_its_place_until_its_deadline(
    endpoint, served, token, processes, service_environment, shared_data_dir
):
    url = private_gateway(processes, service_environment, shared_data_dir / "gateway-reading.log",
                          INFERENCE_MAX_QUEUED="1", INFERENCE_TIMEOUT_SECONDS="3")  # fmt: skip
    body = ONE_ROW if endpoint.startswith("/v2") else {"inputs": {"features": FEATURES[0].tolist()}}
    warm = requests.post(url + endpoint, json=body, headers=auth(token), timeout=30)
    assert warm.status_code == 200, warm.text

    slow_client = _partial_request(url, endpoint, token, json.dumps(body).encode())
    try:
        time.sleep(0.3)  # the server has its headers and half its body: it holds the only place
        started = time.monotonic()
        refused = requests.post(url + endpoint, json=body, headers=auth(token), timeout=30)
        # Refused before its body is read, naming the limit, not queued behind the slow one.
        assert refused.status_code == 503 and "INFERENCE_MAX_QUEUED" in refused.text, refused.text
        assert refused.headers["Retry-After"].isdigit() and time.monotonic() - started < 1.0
        # The slow client is answered 408 at its deadline (3 s after its headers), and lets go of the place.
        answer = http.client.HTTPResponse(slow_client)  # reads the head and body, however they are split
        answer.begin()
        text = answer.read().decode()
        assert answer.status == 408 and "INFERENCE_TIMEOUT_SECONDS" in text, (answer.status, text)
    finally:
        slow_client.close()
    after = requests.post(url + endpoint, json=body, headers=auth(token), timeout=30)
    assert after.status_code == 200, after.text


def test_a_request_with_more_rows_than_max_batch_size_is_refused_400(served, token, gateway_url):
    ModelVersion.objects.filter(pk=served.pk).update(max_batch_size=2)
    # The session gateway may hold the old route: a fresh one resolves it again.
    from core import redis as shared_redis
    from core.invalidation import INVALIDATE_CHANNEL

    shared_redis.client().publish(INVALIDATE_CHANNEL, "test")
    three = FEATURES[[0, 1, 0]]
    for _ in range(50):
        response = requests.post(f"{gateway_url}/v2/models/iris/infer", json=request_body(three),
                                 headers=auth(token), timeout=30)  # fmt: skip
        if response.status_code == 400:
            break
        time.sleep(0.1)
    assert response.status_code == 400 and "at most 2 per request" in response.json()["error"], response.text
    assert "max_batch_size" in response.json()["error"]
    ok = requests.post(f"{gateway_url}/v2/models/iris/infer", json=request_body(FEATURES[:2]), headers=auth(token),
                       timeout=30)  # fmt: skip
    assert ok.status_code == 200, ok.text

    friendly = requests.post(
        f"{gateway_url}/api/v1/models/iris/predict/", json={"inputs": {"features": three.tolist()}},
        headers=auth(token), timeout=30,
    )  # fmt: skip
    assert friendly.status_code == 400 and "at most 2 per request" in friendly.json()["error"], friendly.text


def _backends(application: str) -> set[int]:
    """The PostgreSQL backends (pids) of the connections a server named `application` holds."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application])
        return {int(row[0]) for row in cursor.fetchall()}


def _connections(application: str) -> int:
    return len(_backends(application))


@pytest.mark.parametrize(
    ("pool", "caller"), [(True, "session"), (False, "session"), (True, "token")],
    ids=["pooled-views", "unpooled-views", "pooled-event-loop"],
)  # fmt: skip
def test_database_connections_stay_bounded_under_a_burst(
    served, owner, token, processes, service_environment, shared_data_dir, pool, caller
):
    if connection.vendor != "postgresql":
        pytest.skip("counts PostgreSQL connections (pg_stat_activity)")
    application = f"admission-{uuid.uuid4().hex[:8]}"
    # PGAPPNAME names this server's connections; 3 views at once. Pooled: 3 connections shared by
    # every thread; unpooled: one per view, closed as it returns, and the metrics flusher's own.
    limits = {"DATABASE_POOL": "true", "DATABASE_POOL_SIZE": "3"} if pool else {"DATABASE_POOL": "false"}
    url = private_gateway(processes, service_environment, shared_data_dir / f"gateway-connections-{pool}-{caller}.log",
                          PGAPPNAME=application, WEB_MAX_CONCURRENT_REQUESTS="3", SECRET_KEY=settings.SECRET_KEY,
                          **limits)  # fmt: skip
    # A session's predictions run in Django views; a token's in the event loop, whose lookups
    # (cache misses) borrow from the same pool.
    headers = session_headers(owner) if caller == "session" else auth(token)
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            seen.append(_connections(application))

    def predictions() -> list[tuple[int, float, str | None, str]]:
        return burst(f"{url}/api/v1/models/iris/predict/", token, 80, {"inputs": {"features": [1, 2, 3, 4]}}, headers)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        answers = predictions()
        after_first = _backends(application)
        answers += predictions()
    finally:
        stop.set()
        sampler.join()
    statuses = [status for status, _, _, _ in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 20, answers
    assert seen and max(seen) >= 1, seen
    # Unbounded, this burst opened a connection per request (80; PostgreSQL's default limit is 100).
    assert max(seen) <= 3 + (0 if pool else 1), seen
    if pool:
        # The pool's connections outlive the requests and serve the next ones: no connect per request.
        assert after_first and after_first & _backends(application), (after_first, _backends(application))
        return
    # Unpooled, the views' connections are closed as their requests end, not left to the garbage collector.
    for _ in range(40):
        if _connections(application) <= 1:
            break
        time.sleep(0.1)
    assert _connections(application) <= 1
