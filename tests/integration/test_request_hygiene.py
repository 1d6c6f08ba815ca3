"""One standard of request hygiene on every plane, against the real server (uvicorn serving
portal.asgi: the /v2 gateway, /v1 and Django's REST API), a real worker and Redis.

Hosts, methods, content types, Accept, malformed paths and names, chunked and oversized
bodies (raw sockets, so nothing in between frames them), the bad-token throttle, the truth of
Retry-After, and /metrics' authentication.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from accounts import services as token_services
from registry.models import RegisteredModel
from tests.integration.conftest import auth
from tests.worker import METRICS_AUTH, Processes, start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BODY = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
# The gateway of the throttle tests: few bad tokens allowed, short windows to watch close.
BAD_TOKEN_LIMIT = 5
BAD_TOKEN_WINDOW = 4
RATE_WINDOW = 3


@pytest.fixture(scope="module")
def strict_url(service_environment: dict[str, str], shared_data_dir: Path, worker: Any) -> Iterator[str]:
    """A second server with a small bad-token limit and short rate windows (the session's has neither)."""
    owned = Processes()
    environment = {**service_environment, "BAD_TOKEN_LIMIT": str(BAD_TOKEN_LIMIT),
                   "BAD_TOKEN_WINDOW_SECONDS": str(BAD_TOKEN_WINDOW),
                   "RATE_LIMIT_WINDOW_SECONDS": str(RATE_WINDOW)}  # fmt: skip
    try:
        yield start_gateway(owned, environment, shared_data_dir / "strict-gateway.log")[1]
    finally:
        owned.stop_all()


def _request(method: str, url: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, url, timeout=20, **kwargs)


# --- raw HTTP: what a client library would frame for us -----------------------------------------


def raw(url: str, head: str, parts: Iterable[bytes] = (), timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
    """Send a request head (and body parts) on a socket of its own; the status, headers and body answered.

    Parts the server no longer reads (it answered and closed) are dropped, as a client would see it.
    """
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"the server closed without an answer: {received!r}"
            received += chunk
        top, _, body = received.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def chunked(data: bytes, size: int = 64 * 1024, end: bool = True) -> Iterator[bytes]:
    """`data` in HTTP/1.1 chunks (and the last, empty one unless `end` is False)."""
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    if end:
        yield b"0\r\n\r\n"


def _head(method: str, path: str, url: str, *lines: str) -> str:
    host = urlsplit(url).netloc
    return "\n".join([f"{method} {path} HTTP/1.1", f"Host: {host}", *lines, ""])


# --- host, method, content type, Accept ----------------------------------------------------------


def test_a_host_outside_allowed_hosts_is_400_on_every_plane(gateway_url, token, served):
    for path in ("/v2/models/iris", "/v1/models", "/api/v1/models/"):
        refused = _request("GET", gateway_url + path, headers={**auth(token), "Host": "evil.example"})
        assert refused.status_code == 400, (path, refused.status_code, refused.text[:200])
        assert _request("GET", gateway_url + path, headers=auth(token)).status_code == 200, path
    refused = _request("POST", f"{gateway_url}/v2/models/iris/infer", json=BODY,
                       headers={**auth(token), "Host": "evil.example:8000"})  # fmt: skip
    assert refused.status_code == 400 and "ALLOWED_HOSTS" in refused.json()["error"]


def test_a_method_the_path_does_not_take_is_405_with_allow_on_every_plane(gateway_url, token, served):
    cases = [("DELETE", "/v2/models/iris/infer", "POST"), ("POST", "/v2/models/iris", "GET"),
             ("PUT", "/v2/health/ready", "GET"), ("GET", "/v1/embeddings", "POST"),
             ("DELETE", "/v1/chat/completions", "POST"), ("POST", "/v1/models", "GET")]  # fmt: skip
    for method, path, allowed in cases:
        refused = _request(method, gateway_url + path, headers=auth(token))
        assert refused.status_code == 405, (method, path, refused.status_code, refused.text)
        assert refused.headers["Allow"] == allowed, (method, path)
        assert allowed in refused.text
    django = _request("PUT", f"{gateway_url}/api/v1/tokens/", headers=auth(token))
    assert django.status_code == 405 and "POST" in django.headers["Allow"]


def test_a_body_of_another_content_type_is_415_naming_what_is_read(gateway_url, token, served):
    infer = f"{gateway_url}/v2/models/iris/infer"
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        refused = _request("POST", infer, data=json.dumps(BODY), headers={**auth(token), "Content-Type": content_type})
        assert refused.status_code == 415, (content_type, refused.text)
        assert "application/json" in refused.json()["error"]
    # JSON, JSON with a charset, and no Content-Type at all (tritonclient sends none) are read.
    for headers in ({"Content-Type": "application/json; charset=utf-8"}, {}):
        answered = _request("POST", infer, data=json.dumps(BODY), headers={**auth(token), **headers})
        assert answered.status_code == 200, (headers, answered.text)
    v1 = _request("POST", f"{gateway_url}/v1/embeddings", data="model=iris",
                  headers={**auth(token), "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert v1.status_code == 415 and "application/json" in v1.json()["error"]["message"]
    django = _request("POST", f"{gateway_url}/api/v1/models/", data="name: x",
                      headers={**auth(token), "Content-Type": "text/yaml"})  # fmt: skip
    assert django.status_code == 415 and "text/yaml" in django.json()["error"]


def test_an_accept_header_that_admits_no_answer_is_406(gateway_url, token, served):
    cases = [("GET", "/v2/models/iris", "text/html"), ("POST", "/v2/models/iris/infer", "application/xml"),
             ("GET", "/v2", "image/png"), ("GET", "/v1/models", "text/html"),
             ("POST", "/v1/embeddings", "text/csv")]  # fmt: skip
    for method, path, accept in cases:
        refused = _request(method, gateway_url + path, json=BODY, headers={**auth(token), "Accept": accept})
        assert refused.status_code == 406, (path, refused.status_code, refused.text)
        assert "application/json" in refused.text
    django = _request("GET", f"{gateway_url}/api/v1/models/", headers={**auth(token), "Accept": "application/xml"})
    assert django.status_code == 406
    for accept in ("*/*", "application/json", "application/*;q=0.5, text/html"):
        answered = _request("POST", f"{gateway_url}/v2/models/iris/infer", json=BODY,
                            headers={**auth(token), "Accept": accept})  # fmt: skip
        assert answered.status_code == 200, (accept, answered.text)


# --- paths and names ----------------------------------------------------------------------------

BAD_NAMES = ["ir%00is", "iris%0A", "ir%0Dis", "ir%7Fis", "ir%C2%85is", "a" * 300, "ir%20is", "%FF%FE", "..%2F.."]


def test_malformed_names_versions_and_control_characters_never_reach_the_database(gateway_url, token, served):
    """A 400 or 404 naming the problem on every plane, never a 500 (PostgreSQL refuses NUL in a string)."""
    paths = [f"/v2/models/{name}" for name in BAD_NAMES] + [f"/v2/models/{name}/infer" for name in BAD_NAMES]
    paths += [f"/v2/models/iris/versions/{version}/infer" for version in
              ("99999999999", "%C2%B2", "prod%00", "Production", "1%0A", "x" * 100)]  # fmt: skip
    paths += [f"/v1/models/{name}" for name in BAD_NAMES] + ["/v1/models/iris:%00", "/v1/models/iris:99999999999"]
    paths += [f"/api/v1/models/{name}/" for name in BAD_NAMES]
    paths += ["/api/v1/models/iris/versions/99999999999/", "/api/v1/models/?search=ir%00is",
              "/api/v1/models/iris/aliases/prod%00/", "/api/v1/models/iris%00/predict/",
              "/models/ir%00is/"]  # fmt: skip
    for path in paths:
        method = "POST" if path.endswith(("/infer", "/predict/")) else "GET"
        answer = _request(method, gateway_url + path, json=BODY, headers=auth(token))
        assert answer.status_code in (400, 404), (path, answer.status_code, answer.text[:300])
        if path.startswith(("/v2", "/v1")):
            assert answer.headers["Content-Type"].startswith("application/json"), path
    refused = _request("GET", f"{gateway_url}/v2/models/ir%00is", headers=auth(token)).json()["error"]
    assert "control character (U+0000)" in refused
    refused = _request("GET", f"{gateway_url}/v2/models/{'a' * 300}", headers=auth(token)).json()["error"]
    assert "not a model name" in refused
    # In a /v1 body, the model's address is checked the same way.
    for model in ("ir\u0000is", "iris:\u0000", "iris:99999999999", "a" * 300):
        answer = _request("POST", f"{gateway_url}/v1/embeddings", json={"model": model, "input": "x"},
                          headers=auth(token))  # fmt: skip
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "model", (model, answer.text)
    # A control character sent raw in the request line never gets past the server's parser.
    status, _, _ = raw(gateway_url, _head("GET", "/v2/models/ir\x01is", gateway_url, f"Authorization: Bearer {token}"))
    assert status == 400


# --- bodies: chunked, oversized -----------------------------------------------------------------


def test_a_chunked_json_body_is_parsed_by_django_and_by_the_gateway(gateway_url, token, served):
    head = _head("POST", "/api/v1/models/", gateway_url, f"Authorization: Bearer {token}",
                 "Content-Type: application/json", "Transfer-Encoding: chunked")  # fmt: skip
    status, _, body = raw(gateway_url, head, chunked(json.dumps({"name": "chunky"}).encode(), size=5))
    assert status == 201, body
    assert json.loads(body)["name"] == "chunky" and RegisteredModel.objects.filter(name="chunky").exists()
    head = _head("POST", "/v2/models/iris/infer", gateway_url, f"Authorization: Bearer {token}",
                 "Content-Type: application/json", "Transfer-Encoding: chunked")  # fmt: skip
    status, _, body = raw(gateway_url, head, chunked(json.dumps(BODY).encode(), size=16))
    assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [1, 3], body


def test_a_chunked_body_over_the_limit_is_413_while_it_streams(gateway_url, token, served, settings):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE  # the server runs with the same default
    head = _head("POST", "/api/v1/models/", gateway_url, f"Authorization: Bearer {token}",
                 "Content-Type: application/json", "Transfer-Encoding: chunked")  # fmt: skip
    # More than the limit, and no last chunk: an answer proves the server stopped reading.
    started = time.monotonic()
    status, headers, body = raw(gateway_url, head, chunked(b" " * (limit + 256 * 1024), end=False))
    assert status == 413 and "DATA_UPLOAD_MAX_MEMORY_SIZE" in json.loads(body)["error"], body
    assert headers.get("connection") == "close" and time.monotonic() - started < 10
    # The gateway counts a chunked body the same way (INFERENCE_MAX_BODY_BYTES is 1 MiB in the tests).
    head = _head("POST", "/v2/models/iris/infer", gateway_url, f"Authorization: Bearer {token}",
                 "Transfer-Encoding: chunked")  # fmt: skip
    status, _, body = raw(gateway_url, head, chunked(b" " * (2 * 1024 * 1024), end=False))
    assert status == 413 and b"INFERENCE_MAX_BODY_BYTES" in body


def test_a_chunked_upload_is_411(gateway_url, token, registered_model):
    head = _head("POST", "/api/v1/models/iris/versions/", gateway_url, f"Authorization: Bearer {token}",
                 "Content-Type: multipart/form-data; boundary=b", "Transfer-Encoding: chunked")  # fmt: skip
    status, _, body = raw(gateway_url, head, chunked(b"--b\r\n", end=False))
    assert status == 411 and "Content-Length" in json.loads(body)["error"]


def test_a_declared_body_over_the_limit_is_refused_before_a_byte_is_read(gateway_url, token, served):
    upload = "multipart/form-data; boundary=b"
    cases = [("/api/v1/models/", "application/json", 10 * 1024**2, "DATA_UPLOAD_MAX_MEMORY_SIZE"),
             ("/api/v1/models/iris/versions/", upload, 3 * 1024**3, "MODEL_UPLOAD_MAX_BYTES"),
             ("/v2/models/iris/infer", "application/json", 2 * 1024**2, "INFERENCE_MAX_BODY_BYTES")]  # fmt: skip
    for path, content_type, length, limit in cases:
        head = _head("POST", path, gateway_url, f"Authorization: Bearer {token}", f"Content-Type: {content_type}",
                     f"Content-Length: {length}")  # fmt: skip
        started = time.monotonic()
        # No body is sent at all: a server that waited for it would never answer (the socket times out).
        status, _, body = raw(gateway_url, head, timeout=10)
        assert status == 413 and limit in json.loads(body)["error"], (path, body)
        assert time.monotonic() - started < 5, path


def test_an_upload_with_its_content_length_still_streams_through_to_a_version(
    gateway_url, token, registered_model, model_files
):
    with model_files["torchscript"].open("rb") as stream:
        answer = _request("POST", f"{gateway_url}/api/v1/models/iris/versions/", headers=auth(token),
                          files={"file": ("iris.pt", stream)},
                          data={"signature": json.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                                                      "shape": [-1, 4]}]})})  # fmt: skip
    assert answer.status_code == 201, answer.text
    assert answer.json()["version"] == 1


# --- throttles ----------------------------------------------------------------------------------


def test_bad_tokens_from_one_client_are_throttled_on_every_plane_and_other_clients_are_not(
    strict_url, gateway_url, owner, served
):
    # uvicorn takes X-Forwarded-For from a proxy on 127.0.0.1 (its default), so each test
    # client here has an address of its own, as behind a same-host proxy.
    attacker = {"X-Forwarded-For": f"10.66.{int(time.time()) % 250}.1", "Authorization": "Bearer mp_bad_guess"}
    for _ in range(BAD_TOKEN_LIMIT):
        assert _request("POST", f"{strict_url}/v2/models/iris/infer", json=BODY, headers=attacker).status_code == 401
    started = time.monotonic()
    for path, method in (("/v2/models/iris/infer", "POST"), ("/v1/models", "GET"), ("/api/v1/models/", "GET")):
        refused = _request(method, strict_url + path, json=BODY, headers=attacker)
        assert refused.status_code == 429, (path, refused.status_code, refused.text)
        assert 1 <= int(refused.headers["Retry-After"]) <= BAD_TOKEN_WINDOW, path
        assert "Too many invalid API tokens" in refused.text
    # Another client, with a valid token the server has never seen (a database lookup), is not affected.
    secret = token_services.token_create(user=owner, name="innocent")[1]
    other = {"X-Forwarded-For": "10.7.7.7", **auth(secret)}
    assert _request("POST", f"{strict_url}/v2/models/iris/infer", json=BODY, headers=other).status_code == 200
    assert _request("GET", f"{strict_url}/api/v1/models/", headers=other).status_code == 200
    # Once the window is over, the attacker's next token is looked up again (401, not 429).
    time.sleep(max(0.0, BAD_TOKEN_WINDOW - (time.monotonic() - started)) + 0.5)
    assert _request("POST", f"{strict_url}/v2/models/iris/infer", json=BODY, headers=attacker).status_code == 401


def test_retry_after_is_when_a_rate_limited_token_is_admitted_again(strict_url, owner, served):
    """The hint and the window agree: admitted again no earlier than Retry-After - 1 s (whole seconds,
    rounded up) and no later than Retry-After, on /v2 and on the REST predict endpoint alike."""
    secret = token_services.token_create(user=owner, name="limited", rate_limit_per_minute=2)[1]
    infer = f"{strict_url}/v2/models/iris/infer"
    assert _request("POST", infer, json=BODY, headers=auth(secret)).status_code == 200
    assert _request("POST", infer, json=BODY, headers=auth(secret)).status_code == 200
    friendly = _request("POST", f"{strict_url}/api/v1/models/iris/predict/",
                        json={"inputs": {"features": [1, 2, 3, 4]}}, headers=auth(secret))  # fmt: skip
    refused_at = time.monotonic()
    assert friendly.status_code == 429, friendly.text
    hint = int(friendly.headers["Retry-After"])
    assert 1 <= hint <= RATE_WINDOW
    statuses = []
    while time.monotonic() - refused_at < hint + 2:
        answer = _request("POST", infer, json=BODY, headers=auth(secret))
        statuses.append(answer.status_code)
        if answer.status_code == 200:
            break
        assert answer.status_code == 429 and int(answer.headers["Retry-After"]) <= hint, answer.text
        time.sleep(0.05)
    admitted_after = time.monotonic() - refused_at
    assert statuses[-1] == 200, statuses
    assert hint - 1 - 0.2 <= admitted_after <= hint + 0.3, (hint, admitted_after)


# --- /metrics -----------------------------------------------------------------------------------


def test_metrics_need_the_token_even_from_loopback(gateway_url):
    refused = _request("GET", f"{gateway_url}/metrics")  # this client is 127.0.0.1
    assert refused.status_code == 401 and "METRICS_TOKEN" in refused.json()["error"]
    behind_proxy = _request("GET", f"{gateway_url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert behind_proxy.status_code == 401
    assert _request("GET", f"{gateway_url}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    answered = _request("GET", f"{gateway_url}/metrics", headers=METRICS_AUTH)
    assert answered.status_code == 200 and "# TYPE" in answered.text
