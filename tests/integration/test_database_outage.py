"""PostgreSQL stops and comes back: the web process answers 503 meanwhile and recovers by itself.

The database is a PostgreSQL server of this test's own (tests/integration/faults.py), and so
is the Redis: the session's servers are never stopped. Independent of the backend the rest
of the run uses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from inference import wire
from tests.integration.faults import private_postgres, seed_tokens
from tests.run_environment import run_dir
from tests.worker import redis_start, start_gateway, until

# A PostgreSQL and a Redis of the test's own: CI's RabbitMQ pass would repeat it as it is.
pytestmark = [pytest.mark.integration, pytest.mark.private_broker]

# How long the database stays down (the issue saw the gateway answer 500s for minutes after 30 s;
# what broke, connections closed under the process, breaks the same after any outage).
OUTAGE_SECONDS = 10
POSTGRES_SETTINGS = {
    "SECRET_KEY": "database-outage-test-secret-key-0123456789-abcdefghijklmnop",
    "ALLOWED_HOSTS": "localhost,127.0.0.1,testserver",
    "SECURE_SSL_REDIRECT": "false",
    "SESSION_COOKIE_SECURE": "false",
    "CSRF_COOKIE_SECURE": "false",
}


@pytest.fixture
def fake_worker_beat() -> Iterator[Any]:
    """Keeps a worker heartbeat fresh in a Redis (given later), so readiness depends on the database alone."""
    stop = threading.Event()
    target: dict[str, redis.Redis] = {}

    def beat() -> None:
        while not stop.wait(0.2):
            if "client" in target:
                beat = wire.Heartbeat(["inference"], time.time(), [])
                target["client"].hset(wire.WORKERS_KEY, "outage-test:1", beat.encode())

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield target
    stop.set()
    thread.join(timeout=5)


def _get(base: str, path: str, token: str) -> requests.Response:
    return requests.get(f"{base}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=15)


class Poller:
    """Asks the gateway (/v2) and Django (REST) in turn, every 0.2 s, from a thread; keeps each answer's status."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.statuses: list[tuple[str, int, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            for path in "/v2/models/nosuch", "/api/v1/models/", "/v2/health/ready":
                try:
                    answer = _get(self.base, path, self.token)
                except requests.RequestException as exc:  # no answer at all: a failure too
                    self.statuses.append((path, 0, str(exc)[:200]))
                    continue
                self.statuses.append((path, answer.status_code, answer.text[:200]))

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def test_postgres_stopping_gives_json_503s_and_not_ready_then_service_resumes_without_a_restart(
    service_environment, processes, fake_worker_beat
):
    directory = run_dir() / "database-outage"
    with private_postgres() as server:
        _, redis_url = redis_start(processes, directory / "redis", unix_socket=False)
        # Named like a worker's heartbeat connection, which the gateway checks is open.
        fake_worker_beat["client"] = redis.Redis.from_url(
            redis_url, client_name=f"{wire.WORKER_CLIENT_PREFIX}outage-test:1"
        )
        environment = {key: value for key, value in service_environment.items() if key != "SQLITE_PATH"}
        environment |= POSTGRES_SETTINGS | {
            "DATABASE_URL": server.create_database("portal"), "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url, "INFERENCE_REDIS_URL": redis_url,
        }  # fmt: skip
        tokens = seed_tokens(environment, 4)
        gateway, base = start_gateway(processes, environment, directory / "gateway.log")
        assert _get(base, "/v2/models/nosuch", tokens[0]).status_code == 404
        assert _get(base, "/api/v1/models/", tokens[0]).status_code == 200
        until(lambda: requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 200, 10, "ready")

        with Poller(base, tokens[0]) as poller:
            server.stop()
            stopped = time.monotonic()
            until(lambda: requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 503, 10, "not ready")
            not_ready_after = time.monotonic() - stopped
            # A token never seen (looked up in the database), and a cached one whose route is looked up.
            for token in tokens[1], tokens[0]:
                started = time.monotonic()
                answer = _get(base, "/v2/models/nosuch", token)
                assert answer.status_code == 503, answer.text
                assert "database is unavailable" in answer.json()["error"] and answer.headers["Retry-After"]
                assert time.monotonic() - started < 5
            rest = _get(base, "/api/v1/models/", tokens[0])
            assert rest.status_code == 503 and rest.headers["Content-Type"] == "application/json", rest.text
            assert rest.json()["code"] == "unavailable" and "database is unavailable" in rest.json()["error"]
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))  # down for a while

            server.start()
            restarted = time.monotonic()
            # The same gateway process, with the connections it held before the outage.
            until(lambda: _get(base, "/v2/models/nosuch", tokens[2]).status_code == 404, 15, "the gateway recovered")
            recovered_after = time.monotonic() - restarted
            assert _get(base, "/v2/models/nosuch", tokens[1]).status_code == 404
            assert _get(base, "/api/v1/models/", tokens[3]).status_code == 200
            assert requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 200
            time.sleep(1)  # the poller's answers after the recovery
        assert gateway.poll() is None
        print(f"not ready {not_ready_after:.2f}s after the stop; recovered {recovered_after:.2f}s after the start; "
              f"{len(poller.statuses)} answers polled meanwhile")  # fmt: skip
        assert not_ready_after < 3
        # Asked all along, every plane answered as it should or 503 (JSON, naming the database):
        # never a 500, neither during the outage nor while the connections came back.
        expected = {"/v2/models/nosuch": {404, 503}, "/api/v1/models/": {200, 503}, "/v2/health/ready": {200, 503}}
        wrong = [answer for answer in poller.statuses if answer[1] not in expected[answer[0]]]
        assert not wrong, wrong
        seen = {(path, status) for path, status, _ in poller.statuses}
        assert all((path, 503) in seen for path in expected), seen
        # The last answers, after the recovery, are the normal ones.
        assert {status for path, status, _ in poller.statuses[-3:]} <= {200, 404}, poller.statuses[-3:]
