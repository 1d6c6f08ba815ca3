"""HTTP statuses of the prediction path as gRPC status codes, and the retry information of a 503."""

from __future__ import annotations

import contextvars
import time

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.internal.decoder import _DecodeVarint

from inference import admission
from inference.grpc import status
from inference.grpc.service import arrival_set, peer_address


@pytest.mark.parametrize(
    ("http", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (403, grpc.StatusCode.PERMISSION_DENIED),
        (404, grpc.StatusCode.NOT_FOUND),
        (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (422, grpc.StatusCode.INVALID_ARGUMENT),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (500, grpc.StatusCode.INTERNAL),
        (502, grpc.StatusCode.INTERNAL),
        (503, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (418, grpc.StatusCode.INVALID_ARGUMENT),
        (599, grpc.StatusCode.INTERNAL),
    ],
)
def test_each_http_status_has_the_grpc_code_of_its_meaning(http, code):
    assert status.code_of(http) == code


def test_no_retry_after_no_trailers():
    assert status.trailers(grpc.StatusCode.NOT_FOUND, "Model 'x' not found.", {}) == ()


def _fields(raw: bytes) -> dict[int, list[bytes | int]]:
    """A protobuf message's fields by number (varints as ints, length-delimited as bytes)."""
    fields: dict[int, list[bytes | int]] = {}
    position = 0
    while position < len(raw):
        tag, position = _DecodeVarint(raw, position)
        if tag & 7 == 0:
            value, position = _DecodeVarint(raw, position)
            fields.setdefault(tag >> 3, []).append(value)
            continue
        length, position = _DecodeVarint(raw, position)
        fields.setdefault(tag >> 3, []).append(raw[position : position + length])
        position += length
    return fields


def test_a_retry_after_goes_in_a_trailer_and_in_a_google_rpc_retry_info():
    message = "Model 'iris' v1 is loading on a worker; retry shortly."
    trailers = dict(status.trailers(grpc.StatusCode.UNAVAILABLE, message, {"Retry-After": "3"}))
    assert trailers["retry-after"] == "3"
    details = _fields(trailers["grpc-status-details-bin"])  # google.rpc.Status
    assert details[1] == [grpc.StatusCode.UNAVAILABLE.value[0]] and details[2] == [message.encode()]
    detail = any_pb2.Any.FromString(details[3][0])
    assert detail.type_url == "type.googleapis.com/google.rpc.RetryInfo"
    delay = duration_pb2.Duration.FromString(_fields(detail.value)[1][0])  # RetryInfo.retry_delay
    assert delay.seconds == 3


@pytest.mark.parametrize(
    ("peer", "address"),
    [("ipv4:10.1.2.3:5000", "10.1.2.3"), ("ipv6:[::1]:5000", "::1"), ("unix:/tmp/s", "local"), ("", "local")],
)
def test_the_client_address_is_read_from_the_peer(peer, address):
    assert peer_address(peer) == address


def test_a_shorter_client_deadline_brings_the_request_deadline_forward(settings):
    settings.INFERENCE_TIMEOUT_SECONDS = 30

    def deadlines() -> tuple[float, float]:
        arrival_set(None)
        whole = admission.deadline() - time.time()
        arrival_set(2.0)
        return whole, admission.deadline() - time.time()

    # In a context of its own, as each gRPC call runs: the arrival set here stays here, not in
    # the later tests' requests (their deadlines would start from this one's).
    whole, shortened = contextvars.copy_context().run(deadlines)
    assert 29 < whole <= 30 and 1 < shortened <= 2
    assert admission.arrived.get() is None
