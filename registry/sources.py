"""Source metadata of a version: where it came from (training run, git commit, dataset…).

Free-form string key/values given at upload, checked here so that every interface (API,
command, form) refuses the same things: non-strings, oversized values, and links that are
not http(s) — the version page renders URLs as links, so a `javascript:` URL must never
get in.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from core.errors import InvalidInput

# The keys the upload form asks for by name; any other key is free.
SOURCE_KEYS: dict[str, str] = {
    "run_url": "Training run (URL)",
    "git_commit": "Git commit",
    "dataset": "Dataset",
    "run_id": "Run ID",
}
SOURCE_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
MAX_SOURCE_KEYS = 32
MAX_SOURCE_VALUE = 1000
# The whole object as JSON: enough for a dozen URLs, small enough for every page and list.
MAX_SOURCE_BYTES = 8192
MAX_DERIVATION = 200


def is_url_key(key: str) -> bool:
    """Keys named url or …_url must hold http(s) URLs."""
    return key == "url" or key.endswith("_url")


def http_url(value: str) -> bool:
    """Whether `value` is an absolute http or https URL with a host and no spaces or control characters."""
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def source_parse(raw: Any) -> dict[str, str]:
    """Source metadata from a JSON object (or its text) of string values; empty values are dropped."""
    if raw in (None, "", {}):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"source is not valid JSON: {exc.msg}.", field="source") from None
    if not isinstance(raw, dict):
        raise InvalidInput(
            'source must be a JSON object of strings, e.g. {"run_url": "https://…", "git_commit": "3f2a…"}.',
            field="source",
        )
    if len(raw) > MAX_SOURCE_KEYS:
        raise InvalidInput(f"source has {len(raw)} keys; at most {MAX_SOURCE_KEYS}.", field="source")
    parsed: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not SOURCE_KEY_RE.match(key):
            raise InvalidInput(
                f"Invalid source key {key!r}: 1-64 letters, digits, '_', '.' or '-', starting with a letter.",
                field="source",
            )
        if not isinstance(value, str):
            raise InvalidInput(
                f"source.{key} must be a string, not {type(value).__name__} (write numbers as text).", field="source"
            )
        value = value.strip()
        if not value:
            continue
        if len(value) > MAX_SOURCE_VALUE:
            raise InvalidInput(f"source.{key} is {len(value)} characters; at most {MAX_SOURCE_VALUE}.", field="source")
        if is_url_key(key) and not http_url(value):
            raise InvalidInput(
                f"source.{key} must be an http:// or https:// URL (it is shown as a link), not {value[:80]!r}.",
                field="source",
            )
        parsed[key] = value
    size = len(json.dumps(parsed, ensure_ascii=False).encode())
    if size > MAX_SOURCE_BYTES:
        raise InvalidInput(f"source is {size} bytes as JSON; at most {MAX_SOURCE_BYTES}.", field="source")
    return parsed


def source_from_lines(text: str) -> dict[str, str]:
    """`key=value` lines (the upload form's free field and the command's --source) as a dict."""
    pairs: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"Source line {number} is not key=value: {line.strip()[:80]!r}.", field="source")
        pairs[key.strip()] = value.strip()
    return pairs


def derivation_parse(raw: Any, *, has_parent: bool) -> str:
    """How a version was derived from its parent: a short text, only beside a parent."""
    if raw in (None, ""):
        return ""
    if not isinstance(raw, str):
        raise InvalidInput("derivation must be a string.", field="derivation")
    if not has_parent:
        raise InvalidInput(
            "derivation describes how a version came from its parent; give parent too.", field="derivation"
        )
    text = raw.strip()
    if len(text) > MAX_DERIVATION:
        raise InvalidInput(f"derivation is {len(text)} characters; at most {MAX_DERIVATION}.", field="derivation")
    return text


def source_rows(source: dict[str, Any]) -> list[dict[str, str]]:
    """Source metadata for a page: the named keys first, then the rest by name; `href` only for http(s) URLs.

    Checked again here, not only at upload: a row written some other way (the admin, a shell)
    is still never rendered as a javascript: link.
    """
    ordered = [key for key in SOURCE_KEYS if key in source] + sorted(key for key in source if key not in SOURCE_KEYS)
    rows = []
    for key in ordered:
        value = str(source[key])
        rows.append({"key": key, "label": SOURCE_KEYS.get(key, key), "value": value,
                     "href": value if http_url(value) else ""})  # fmt: skip
    return rows
