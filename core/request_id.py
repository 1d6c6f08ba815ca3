"""A request id for every web request, so an audit event names the request that made it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from django.http import HttpRequest, HttpResponse

HEADER = "X-Request-ID"
# A caller's (or proxy's) id is kept when it is short and plain; anything else is replaced.
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_current: ContextVar[str] = ContextVar("request_id", default="")


def acceptable_request_id(offered: str) -> bool:
    """Whether a caller's X-Request-ID is kept (short and plain) rather than replaced."""
    return bool(_ACCEPTABLE.match(offered))


def current_request_id() -> str:
    """The id of the request being handled in this context ("" outside a request)."""
    return _current.get()


class RequestIdMiddleware:
    """Takes X-Request-ID from the request (or makes one) and echoes it on the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        offered = request.headers.get(HEADER, "")
        request_id = offered if acceptable_request_id(offered) else uuid.uuid4().hex
        token = _current.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            _current.reset(token)
        response[HEADER] = request_id
        return response
