"""Token usage metering: prompt and completion tokens per version, minute, user and API token.

Fed by the recorder (monitoring.metrics.recording) beside the serving samples and on the
same schedule: an answered request costs one list append; the background thread applies
the appended usage to this aggregator and to the Prometheus token counters, and the
recorder's flush merges the aggregator into this process's UsageBucket rows.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken
from monitoring.metrics.prometheus import COMPLETION_TOKENS, PROMPT_TOKENS
from monitoring.models import UsageBucket
from registry.models import ModelVersion

UsageKey = tuple[int, int, int | None, int | None]  # version id, minute (epoch // 60), user id, token id
# A cell: requests, prompt tokens, completion tokens.
UsageCell = list[int]
# What record_usage appends: version id, model, version, user id, token id, prompt, completion, minute.
UsageSample = tuple[int, str, int, int | None, int | None, int, int, int]


class UsageMeter:
    """This process's usage aggregator (thread-safe) and its Prometheus counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: dict[UsageKey, UsageCell] = {}
        self._counters: dict[tuple[str, int], tuple[Any, Any]] = {}

    def apply(self, samples: list[UsageSample]) -> None:
        """Add drained samples to the cells, and their tokens to Prometheus (each series written once)."""
        series: dict[tuple[str, int], list[int]] = {}
        with self._lock:
            for version_id, model, version, user_id, token_id, prompt, completion, minute in samples:
                key = (version_id, minute, user_id, token_id)
                cell = self._cells.get(key)
                if cell is None:
                    cell = self._cells[key] = [0, 0, 0]
                cell[0] += 1
                cell[1] += prompt
                cell[2] += completion
                sums = series.setdefault((model, version), [0, 0])
                sums[0] += prompt
                sums[1] += completion
        for (model, version), (prompt, completion) in series.items():
            counters = self._counters.get((model, version))
            if counters is None:
                labels = (model, str(version))
                counters = self._counters[(model, version)] = (PROMPT_TOKENS.labels(*labels),
                                                               COMPLETION_TOKENS.labels(*labels))  # fmt: skip
            if prompt:
                counters[0].inc(prompt)
            if completion:
                counters[1].inc(completion)

    def take(self) -> dict[UsageKey, UsageCell]:
        """Hand over the cells gathered since the last take."""
        with self._lock:
            cells, self._cells = self._cells, {}
        return cells

    def restore(self, cells: dict[UsageKey, UsageCell]) -> None:
        """Put back cells that could not be written, to go with the next flush."""
        with self._lock:
            for key, cell in cells.items():
                mine = self._cells.setdefault(key, [0, 0, 0])
                for i in range(3):
                    mine[i] += cell[i]

    def clear(self) -> None:
        """Forget everything (a forked process starts afresh)."""
        with self._lock:
            self._cells.clear()
            self._counters.clear()


def usage_write(cells: dict[UsageKey, UsageCell], process: str) -> int:
    """Merge usage cells into this process's UsageBucket rows; returns rows written."""
    # A version deleted since takes its usage with it; a token or user deleted leaves the row, unnamed.
    alive = set(ModelVersion.objects.filter(pk__in={key[0] for key in cells}).values_list("pk", flat=True))
    tokens = set(ApiToken.objects.filter(pk__in={key[3] for key in cells if key[3]}).values_list("pk", flat=True))
    users = set(
        get_user_model().objects.filter(pk__in={key[2] for key in cells if key[2]}).values_list("pk", flat=True)
    )
    written = 0
    with transaction.atomic():
        for (version_id, minute, user_id, token_id), (requests, prompt, completion) in cells.items():
            if version_id not in alive:
                continue
            caller: dict[str, Any] = {"user_id": user_id if user_id in users else None,
                                      "token_id": token_id if token_id in tokens else None}  # fmt: skip
            row, _ = UsageBucket.objects.select_for_update().get_or_create(
                version_id=version_id, minute=datetime.fromtimestamp(minute * 60, tz=UTC), process=process, **caller
            )
            row.requests += requests
            row.prompt_tokens += prompt
            row.completion_tokens += completion
            row.save(update_fields=["requests", "prompt_tokens", "completion_tokens"])
            written += 1
    return written


def usage_prune() -> int:
    """Delete usage older than USAGE_RETENTION_DAYS (Celery beat: monitoring.tasks.metrics_prune)."""
    days = float(getattr(settings, "USAGE_RETENTION_DAYS", 400))
    deleted, _ = UsageBucket.objects.filter(minute__lt=timezone.now() - timedelta(days=days)).delete()
    return deleted
