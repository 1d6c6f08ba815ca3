"""Errors that services raise, each carrying the HTTP status an interface should answer.

Services stay free of HTTP frameworks; the REST exception handler, browser views and
management commands translate these into a JSON error, a form message or an exit code.
"""

from __future__ import annotations


class PortalError(Exception):
    """Base class: `message` is meant for a person and names what is wrong."""

    status_code = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(PortalError):
    """The request is well-formed but its content is not acceptable."""


class NotFound(PortalError):
    """The object does not exist, or the caller may not know that it does."""

    status_code = 404
    code = "not_found"


class PermissionDenied(PortalError):
    """The caller can see the object but may not do this to it."""

    status_code = 403
    code = "permission_denied"


class Conflict(PortalError):
    """The request clashes with the current state (a duplicate name, a busy object)."""

    status_code = 409
    code = "conflict"


class PayloadTooLarge(PortalError):
    """A body or file over the configured limit."""

    status_code = 413
    code = "too_large"


class ServiceUnavailable(PortalError):
    """A dependency (broker, worker) is not answering; the caller may retry later."""

    status_code = 503
    code = "unavailable"


class InsufficientStorage(PortalError):
    """The store (or the upload's temporary disk) is full: nothing was kept; retry once there is room."""

    status_code = 507
    code = "insufficient_storage"


class Unprocessable(PortalError):
    """The input fits the signature but the model could not compute on it."""

    status_code = 422
    code = "model_error"


class GatewayTimeout(PortalError):
    """No worker answered in time."""

    status_code = 504
    code = "timeout"


class RetryLater(PortalError):
    """An error the caller may retry after `retry_after` seconds, sent as the Retry-After header."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TooManyRequests(RetryLater):
    """A token went over its rate limit; `retry_after` says when the next window opens.

    `limit` names what ran out: `requests` (per minute) or `tokens` (model tokens per minute).
    """

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, limit: str = "requests") -> None:
        super().__init__(message, retry_after=retry_after)
        self.limit = limit


class Overloaded(ServiceUnavailable, RetryLater):
    """Admission refused: the model's queue is full; `retry_after` (seconds) is when to try again."""

    code = "overloaded"


class MethodNotAllowed(PortalError):
    """The path exists but not for this method; `allowed` goes out as the Allow header."""

    status_code = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class NotAcceptable(PortalError):
    """None of the media types the answer can take is acceptable to the client (its Accept header)."""

    status_code = 406
    code = "not_acceptable"


class LengthRequired(PortalError):
    """A body without a Content-Length where one is needed (a chunked upload)."""

    status_code = 411
    code = "length_required"


class UnsupportedMediaType(PortalError):
    """The body's Content-Type is not one the endpoint reads."""

    status_code = 415
    code = "unsupported_media_type"
