"""The REST API's JSON parser with limits: body size before reading, nesting depth before parsing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

import orjson
from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from core.errors import PayloadTooLarge
from core.jsondepth import nested_deeper_than

MAX_JSON_DEPTH = 32


class LimitedJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE bytes and MAX_JSON_DEPTH levels (413 / 400)."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH", "") if request is not None else ""
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"The JSON body is larger than the limit of {limit} bytes.")
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(f"The JSON body is larger than the limit of {limit} bytes.")
        return json_body_loads(raw, (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET)


def json_body_loads(raw: bytes, encoding: str = "utf-8") -> Any:
    """A JSON request body read under its size limit, parsed: a ParseError (400) past MAX_JSON_DEPTH
    levels or when it is not JSON. Shared by the parser and the friendly predict endpoint's
    event-loop path (inference.api.predict_asgi), so both answer alike."""
    if nested_deeper_than(raw, MAX_JSON_DEPTH):
        raise ParseError(f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.")
    if encoding.lower().replace("-", "") == "utf8":
        try:
            # Several times faster on a body of numbers (a tensor); what orjson refuses (NaN,
            # integers past 64 bits, invalid JSON) goes to the standard parser below.
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw.decode(encoding))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"The body is not valid JSON: {exc}") from None
