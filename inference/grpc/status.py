"""How an HTTP status of the prediction path is told over gRPC: a status code, the same
message, and for a retryable refusal (503 with Retry-After, 429) the wait, both as a
`retry-after` trailer (seconds, as the HTTP header) and as gRPC's standard RetryInfo detail
(google.rpc.Status in `grpc-status-details-bin`), which gRPC client libraries read."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2

# HTTP status -> gRPC code, as the REST side answers the same failure.
CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # The model raised on this input (REST: 422 naming the model and its error).
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
DETAILS_KEY = "grpc-status-details-bin"


def code_of(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP status (another 4xx: INVALID_ARGUMENT; another 5xx: INTERNAL)."""
    code = CODES.get(status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL


def trailers(code: grpc.StatusCode, message: str, headers: dict[str, str]) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata of a failure: the wait before a retry, where the HTTP answer has a Retry-After."""
    retry_after = headers.get("Retry-After", "")
    if not retry_after.isdigit():
        return ()
    return (("retry-after", retry_after), (DETAILS_KEY, status_details(code, message, int(retry_after))))


def status_details(code: grpc.StatusCode, message: str, retry_seconds: int) -> bytes:
    """A serialized google.rpc.Status carrying one google.rpc.RetryInfo (written field by field:
    two small messages do not warrant the googleapis-common-protos package)."""
    retry_info = _field(1, duration_pb2.Duration(seconds=retry_seconds).SerializeToString())
    detail = any_pb2.Any(type_url=RETRY_INFO_TYPE, value=retry_info).SerializeToString()
    return _varint_field(1, code.value[0]) + _field(2, message.encode()) + _field(3, detail)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (bytes, string or message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload
