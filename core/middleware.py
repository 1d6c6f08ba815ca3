"""Turns a PortalError that escaped a browser view into its 4xx page instead of a 500, and
refuses paths and queries that no resource can be named by (RequestHygieneMiddleware).

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

from core import hygiene
from core.errors import InvalidInput, PortalError

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


class RequestHygieneMiddleware:
    """A path with a control character, or a query with a NUL, is a 400 before any view runs.

    The same rule as the data plane's (core.hygiene): such a value reaching PostgreSQL is a
    500 ("A string literal cannot contain NUL"), and no name, version or filter can hold one.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            hygiene.path_checked(request.path)
            if any("\x00" in key or "\x00" in "".join(values) for key, values in request.GET.lists()):
                raise InvalidInput("The query string holds a NUL character (U+0000); no filter takes one.")
        except PortalError as error:
            # Answered before the session and user exist: no template (the base page needs them).
            if request.path.startswith(API_PREFIXES) or "application/json" in request.headers.get("Accept", ""):
                return JsonResponse({"error": error.message, "code": error.code}, status=error.status_code)
            return HttpResponse(error.message, status=error.status_code, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
