"""Request hygiene: the rules every plane applies before authentication or a database query.

Django (with DRF) checks a request's host against ALLOWED_HOSTS, its method (405 with
Allow), its Content-Type (415) and its Accept header (406). The data plane's lean ASGI apps
(the /v2 gateway, the /v1 API) answer the same things through these functions, and
Django's own middleware refuses the same control characters in paths and queries, so no
plane lets a NUL reach PostgreSQL (where it is a 500) or a newline reach a log line.

Everything here is pure and cheap: these checks run on every /v2 request. The host and
Accept verdicts are memoised (clients send the same few values over and over).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from core.errors import InvalidInput, MethodNotAllowed, NotAcceptable, UnsupportedMediaType

# C0 controls, DEL and C1 controls: never part of a name, a version or a path.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A verdict per distinct Host header: few in practice; bounded so that junk cannot grow it.
_HOST_CACHE_SIZE = 256
_hosts: dict[bytes, bool] = {}
_hosts_for: list[Any] = [None]

JSON = "application/json"


def control_character(value: str) -> str | None:
    """The first control character in `value` as U+XXXX, or None when it has none."""
    found = _CONTROL.search(value)
    return f"U+{ord(found.group()):04X}" if found else None


def path_checked(path: str) -> None:
    """A decoded path holding a control character is refused (400) before routing."""
    if path.isprintable():  # the common case, at C speed (controls are never printable)
        return
    found = control_character(path)
    if found:
        raise InvalidInput(f"The request path holds a control character ({found}); no resource is named so.")


def host_checked(headers: dict[bytes, bytes], server: tuple[str, int | None] | None) -> None:
    """The Host header (or the server's own address without one) matches ALLOWED_HOSTS, else 400.

    The same rule and message as Django's DisallowedHost; DEBUG with no ALLOWED_HOSTS allows
    localhost, as Django does.
    """
    raw = headers.get(b"host")
    if raw is None:
        if not server:
            return  # no HTTP server in between (an app called in-process): nothing names a host
        raw = (f"{server[0]}:{server[1]}" if server[1] else str(server[0])).encode()
    allowed = settings.ALLOWED_HOSTS
    if _hosts_for[0] is not allowed:  # settings changed (tests): forget the verdicts
        _hosts.clear()
        _hosts_for[0] = allowed
    verdict = _hosts.get(raw)
    if verdict is None:
        verdict = _host_valid(raw.decode("latin-1"), allowed)
        if len(_hosts) >= _HOST_CACHE_SIZE:
            _hosts.clear()
        _hosts[raw] = verdict
    if not verdict:
        host = raw.decode("latin-1")
        raise InvalidInput(f"Invalid HTTP_HOST header: {host!r}. The portal does not answer for this host "
                           "(ALLOWED_HOSTS).")  # fmt: skip


def _host_valid(host: str, allowed: list[str]) -> bool:
    if control_character(host):
        return False
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    domain, _ = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed)


def method_checked(method: str, allowed: tuple[str, ...], path: str) -> None:
    """405 with Allow when `method` is not one of `allowed` on this path."""
    if method not in allowed:
        raise MethodNotAllowed(f"Method {method} is not allowed on {path}; use {' or '.join(allowed)}.",
                               allowed=allowed)  # fmt: skip


def content_type_checked(headers: dict[bytes, bytes], accepted: tuple[str, ...]) -> None:
    """A body's Content-Type is one of `accepted` (parameters such as charset aside), else 415.

    A body without a Content-Type is read as the first accepted type: tritonclient and
    `requests.post(data=...)` send none.
    """
    raw = headers.get(b"content-type")
    if raw is None:
        return
    media = _media_type(raw)
    if media not in accepted:
        raise UnsupportedMediaType(
            f"Unsupported Content-Type {media!r}: this endpoint reads {' or '.join(accepted)} "
            "(with curl, add -H 'Content-Type: application/json')."
        )


def accept_checked(headers: dict[bytes, bytes], offered: tuple[str, ...]) -> None:
    """406 when the Accept header admits none of the media types the answer may take."""
    raw = headers.get(b"accept")
    if raw is not None and not _acceptable(raw, offered):
        raise NotAcceptable(
            f"Nothing acceptable: the answer is {' or '.join(offered)}, the Accept header asks for "
            f"{raw.decode('latin-1')!r}."
        )


@functools.lru_cache(maxsize=256)
def _media_type(raw: bytes) -> str:
    return raw.split(b";", 1)[0].strip().lower().decode("latin-1")


@functools.lru_cache(maxsize=256)
def _acceptable(raw: bytes, offered: tuple[str, ...]) -> bool:
    """Whether any offered type matches a range of the Accept header with q > 0 (RFC 9110 12.5.1)."""
    ranges = list(_media_ranges(raw.decode("latin-1")))
    if not ranges:
        return True  # an empty Accept header is taken as none
    for media in offered:
        kind = media.split("/", 1)[0]
        best: tuple[int, float] | None = None  # (specificity, q) of the most specific matching range
        for pattern, q in ranges:
            if pattern == media:
                specificity = 2
            elif pattern == f"{kind}/*":
                specificity = 1
            elif pattern == "*/*":
                specificity = 0
            else:
                continue
            if best is None or specificity > best[0]:
                best = (specificity, q)
        if best is not None and best[1] > 0:
            return True
    return False


def _media_ranges(header: str) -> Iterable[tuple[str, float]]:
    for part in header.split(","):
        pieces = part.split(";")
        pattern = pieces[0].strip().lower()
        if not pattern:
            continue
        q = 1.0
        for parameter in pieces[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        yield pattern, q


def client_address(scope: dict[str, Any] | Any) -> str:
    """The client's address as the server saw it (uvicorn's --proxy-headers apply), or 'local'."""
    client = scope.get("client")
    return str(client[0]) if client else "local"
