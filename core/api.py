"""Cross-cutting pieces of the REST API: the error shape (and its schema) and pagination."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import PayloadTooLarge, PortalError, ServiceUnavailable

# The body of every REST API error (see exception_handler). Declared inline: a serializer
# class cannot have a field named `fields`.
ERROR_BODY = inline_serializer(
    name="Error",
    fields={
        "error": serializers.CharField(help_text="One sentence naming the problem, for a person to act on."),
        "code": serializers.CharField(help_text="A stable, machine-readable code: invalid, not_found, conflict, ..."),
        "fields": serializers.DictField(required=False, help_text="Per-field messages, when fields are named."),
        "figures": serializers.DictField(required=False, help_text="What a refusing check compared (the gate)."),
    },
)

# The error response of every operation's schema.
ERROR = OpenApiResponse(ERROR_BODY, description="An error with a message naming the problem.")


class DatabaseUnavailable(ServiceUnavailable):
    """The database did not answer (an outage, a restart): 503 with a hint to retry."""

    headers = {"Retry-After": "2"}


DATABASE_UNAVAILABLE = DatabaseUnavailable("The database is unavailable; try again shortly.")


class PagePagination(PageNumberPagination):
    """`?page=N&page_size=M` (at most 200 a page)."""

    page_size_query_param = "page_size"
    max_page_size = 200


def _flatten(detail: Any, prefix: str = "") -> list[str]:
    """DRF's nested validation errors as 'field: message' lines."""
    if isinstance(detail, dict):
        lines: list[str] = []
        for key, value in detail.items():
            name = key if key != "non_field_errors" else ""
            lines += _flatten(value, f"{prefix}.{name}" if prefix and name else name or prefix)
        return lines
    if isinstance(detail, list):
        return [line for item in detail for line in _flatten(item, prefix)]
    return [f"{prefix}: {detail}" if prefix else str(detail)]


def request_too_large() -> PayloadTooLarge:
    """The refusal of a request body over DATA_UPLOAD_MAX_MEMORY_SIZE (Django's RequestDataTooBig)."""
    return PayloadTooLarge(
        f"The request body is larger than the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes "
        "(DATA_UPLOAD_MAX_MEMORY_SIZE)."
    )


def portal_error_body(exc: PortalError) -> dict[str, Any]:
    """A PortalError as the API's error body: its message, code, field and figures."""
    body: dict[str, Any] = {"error": exc.message, "code": exc.code}
    if exc.field:
        body["fields"] = {exc.field: [exc.message]}
    figures = getattr(exc, "figures", None)
    if figures:
        body["figures"] = figures  # e.g. what the promotion gate compared
    return body


def api_exception_body(exc: exceptions.APIException) -> dict[str, Any]:
    """A DRF exception (a serializer's ValidationError, a parser's ParseError, ...) as the API's error body."""
    if isinstance(exc, exceptions.ValidationError):
        return {"error": "; ".join(_flatten(exc.detail)), "code": "invalid", "fields": exc.detail}
    codes = exc.get_codes()
    return {"error": str(exc.detail), "code": codes if isinstance(codes, str) else "error"}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every API error as `{"error": message, "code": ..., "fields": {...}}`.

    `error` is one sentence a person can act on; `fields` keeps DRF's per-field detail
    for programs that want it.
    """
    if isinstance(exc, RequestDataTooBig):
        exc = request_too_large()
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is down or restarting: the client may retry; nothing was changed.
        exc = DATABASE_UNAVAILABLE
    if isinstance(exc, PortalError):
        return Response(portal_error_body(exc), status=exc.status_code, headers=getattr(exc, "headers", None))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.APIException):
        body = api_exception_body(exc)
        if isinstance(exc, exceptions.ValidationError):
            response.status_code = status.HTTP_400_BAD_REQUEST
    else:  # pragma: no cover - DRF only returns responses for APIException
        body = {"error": str(exc), "code": "error"}
    response.data = body
    return response
