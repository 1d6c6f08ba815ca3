"""Token usage for chargeback: the per-process UsageBucket rows summed per version and caller.

Who sees what: staff see everyone's usage; anyone else sees only their own (their tokens'
and their browser session's), whatever models it was on.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from django.db.models import QuerySet, Sum
from django.utils import timezone

from core.errors import InvalidInput
from monitoring.models import UsageBucket
from monitoring.services.stats import WINDOWS
from registry.models import ModelVersion

SUMS = {"requests": Sum("requests"), "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens")}  # fmt: skip
CSV_FIELDS = ("minute", "version__model__name", "version__version", "user__username", "token_id", "token__name",
              "token__prefix")  # fmt: skip
CSV_COLUMNS = ("minute", "model", "version", "user", "token_id", "token", "requests", "prompt_tokens",
               "completion_tokens", "total_tokens")  # fmt: skip


def usage_visible(user: Any) -> QuerySet[UsageBucket]:
    """Usage rows the user may see: all for staff, their own otherwise."""
    rows = UsageBucket.objects.all()
    return rows if user.is_staff else rows.filter(user_id=user.pk)


def token_filter_parse(raw: str | None) -> int | None:
    """The `token` filter: an API token's id (as the tokens API lists it), or None."""
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise InvalidInput(f"token must be an API token's id (a whole number); got {raw!r}.", field="token")
    return int(raw)


def usage_rows(user: Any, window: str, *, model: str | None = None, token: int | None = None) -> QuerySet[UsageBucket]:
    """The visible rows of a window, narrowed to a model (by name) and an API token (by id)."""
    span, _ = WINDOWS[window]
    rows = usage_visible(user).filter(minute__gte=timezone.now() - span)
    if model:
        rows = rows.filter(version__model__name=model)
    if token is not None:
        rows = rows.filter(token_id=token)
    return rows


def _sums(row: Mapping[str, Any]) -> dict[str, int]:
    prompt, completion = row["prompt_tokens"] or 0, row["completion_tokens"] or 0
    return {"requests": row["requests"] or 0, "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def usage_summary(user: Any, window: str, *, model: str | None = None, token: int | None = None) -> dict[str, Any]:
    """Tokens used over a window: totals, per model version and per caller (user and API token).

    One query, summed here three ways: the parts always agree, even while a process is flushing
    its usage (three queries could each see a different moment of the table).
    """
    groups = list(
        usage_rows(user, window, model=model, token=token)
        .values("version__model__name", "version__version", "user__username", "token_id", "token__name",
                "token__prefix")
        .annotate(**SUMS)
    )  # fmt: skip
    versions: dict[tuple[str, int], dict[str, int]] = {}
    callers: dict[tuple[str, int | None], tuple[Mapping[str, Any], dict[str, int]]] = {}
    totals = _zero()
    for row in groups:
        sums = _sums(row)
        _add(versions.setdefault((row["version__model__name"], row["version__version"]), _zero()), sums)
        _add(callers.setdefault((row["user__username"], row["token_id"]), (row, _zero()))[1], sums)
        _add(totals, sums)
    span, _ = WINDOWS[window]
    return {
        "window": window,
        "since": (timezone.now() - span).isoformat(),
        "totals": totals,
        "by_version": [{"model": name, "version": number, **sums} for (name, number), sums in sorted(versions.items())],
        "by_caller": [
            {"user": row["user__username"], "token_id": row["token_id"], "token": _token_label(row), **sums}
            for _, (row, sums) in sorted(callers.items(), key=lambda item: (item[0][0], _nulls_first(item[0][1])))
        ],
    }


def _zero() -> dict[str, int]:
    return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _add(into: dict[str, int], sums: Mapping[str, int]) -> None:
    for key, value in sums.items():
        into[key] += value


def _nulls_first(token_id: int | None) -> tuple[bool, int]:
    """Sort key of a caller's token id: the browser session (no token) first, then tokens by id."""
    return (token_id is not None, token_id or 0)


def usage_series(window: str, versions: QuerySet[ModelVersion]) -> dict[str, Any]:
    """Tokens per minute of each version over a window, in the window's steps (everyone's usage, no callers).

    For the model page: whoever sees a model sees its traffic, and this is its traffic in tokens.
    """
    span, step = WINDOWS[window]
    now = timezone.now()
    start = int((now - span).timestamp() // step * step)
    points = int(span.total_seconds() // step) + 1
    per_minute = 60 / step
    lines: dict[int, dict[str, Any]] = {}
    rows: Iterable[Mapping[str, Any]] = (
        UsageBucket.objects.filter(version__in=versions, minute__gte=now - span)
        .values("version_id", "version__version", "version__model__name", "minute")
        .annotate(**SUMS)
    )
    for row in rows:
        slot = int((row["minute"].timestamp() - start) // step)
        if not 0 <= slot < points:
            continue
        line = lines.get(row["version_id"])
        if line is None:
            line = lines[row["version_id"]] = {"name": f"{row['version__model__name']} v{row['version__version']}",
                                               "prompt": [0.0] * points, "completion": [0.0] * points}  # fmt: skip
        line["prompt"][slot] += (row["prompt_tokens"] or 0) * per_minute
        line["completion"][slot] += (row["completion_tokens"] or 0) * per_minute
    times = [datetime.fromtimestamp(start + i * step, tz=now.tzinfo).isoformat() for i in range(points)]
    return {"window": window, "times": times, "series": sorted(lines.values(), key=lambda line: line["name"])}


def _token_label(row: Mapping[str, Any]) -> str | None:
    if row["token_id"] is None:
        return None
    if row["token__name"] is None:
        return "(deleted token)"
    return f"{row['token__name']} (mp_{row['token__prefix']}_…)"


def _cell(text: str) -> str:
    # Names are chosen by users: one a spreadsheet would read as a formula is quoted as text.
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def usage_csv(user: Any, window: str, *, model: str | None = None, token: int | None = None) -> str:
    """The visible usage of a window as CSV, one line per minute, model version and caller (for chargeback)."""
    rows = (
        usage_rows(user, window, model=model, token=token)
        .values(*CSV_FIELDS)
        .annotate(**SUMS)
        .order_by("minute", "version__model__name", "version__version", "user__username", "token_id")
    )
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        sums = _sums(row)
        writer.writerow([row["minute"].isoformat(), _cell(row["version__model__name"]), row["version__version"],
                         _cell(row["user__username"] or ""), row["token_id"] or "", _cell(_token_label(row) or ""),
                         sums["requests"], sums["prompt_tokens"], sums["completion_tokens"],
                         sums["total_tokens"]])  # fmt: skip
    return out.getvalue()
