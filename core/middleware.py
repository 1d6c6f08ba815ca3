"""Turns a PortalError that escaped a browser view into its 4xx page instead of a 500.

Upload limits are enforced while Django parses a multipart body. For browser pages the
CSRF middleware is the first to parse it, and an exception there would become a 500;
so this middleware (placed before it) parses such bodies itself and answers the error.
The REST API parses its own bodies and maps errors in core.api.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from core.errors import PortalError

API_PREFIXES = ("/api/",)


def _error_response(request: HttpRequest, error: PortalError) -> HttpResponse:
    if request.path.startswith(API_PREFIXES) or "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"error": error.message, "code": error.code}, status=error.status_code)
    return render(
        request, "error.html", {"status": error.status_code, "message": error.message}, status=error.status_code
    )


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's handler500: a database outage is a 503 the client may retry, JSON for the API.

    Rendered without templates or context processors, which would query the database again.
    """
    error = sys.exc_info()[1]
    unavailable = isinstance(error, OperationalError | InterfaceError)
    status = 503 if unavailable else 500
    message = "The database is unavailable; try again shortly." if unavailable else "Internal server error."
    if request.path.startswith(API_PREFIXES) or "application/json" in request.headers.get("Accept", ""):
        code = "unavailable" if unavailable else "error"
        response: HttpResponse = JsonResponse({"error": message, "code": code}, status=status)
    else:
        response = HttpResponse(
            f"<!doctype html><title>Error {status}</title><h1>Error {status}</h1><p>{message}</p>", status=status
        )
    if unavailable:
        response["Retry-After"] = "2"
    return response


class PortalErrorMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            request.method == "POST"
            and request.content_type == "multipart/form-data"
            and not request.path.startswith(API_PREFIXES)
        ):
            try:
                request.POST  # noqa: B018 - parse now, so limit errors are answered here
            except PortalError as error:
                return _error_response(request, error)
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, PortalError):
            return _error_response(request, exception)
        return None
