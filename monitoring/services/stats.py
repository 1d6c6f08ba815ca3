"""Serving statistics: the per-process MetricBucket rows summed per version, window and series."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from core.errors import InvalidInput, NotFound
from monitoring import metrics
from monitoring.models import MetricBucket
from registry.models import ModelVersion, RegisteredModel
from registry.text_tasks import TextTask

WINDOWS = {"hour": (timedelta(hours=1), 60), "day": (timedelta(days=1), 15 * 60), "week": (timedelta(days=7), 3600)}
QUANTILES = (0.5, 0.95, 0.99)


# --- serving statistics -------------------------------------------------------------------


def window_parse(raw: str | None) -> str:
    """`hour` (default), `day` or `week`; anything else is a 400 naming the choices."""
    window = raw or "hour"
    if window not in WINDOWS:
        raise InvalidInput(f"window must be one of {', '.join(WINDOWS)}; got {window!r}.", field="window")
    return window


def buckets_since(window: str, versions: QuerySet[ModelVersion] | None = None) -> QuerySet[MetricBucket]:
    span, _ = WINDOWS[window]
    rows = MetricBucket.objects.filter(minute__gte=timezone.now() - span)
    return rows.filter(version__in=versions) if versions is not None else rows


@dataclass
class GenerationTotals:
    """Summed timing of the generated answers in some MetricBucket rows."""

    answers: int = 0
    ttft_ms: float = 0.0
    ttft_hist: dict[str, int] = field(default_factory=dict)
    inter_token_ms: float = 0.0
    inter_tokens: int = 0
    inter_token_hist: dict[str, int] = field(default_factory=dict)
    decode_tokens: int = 0
    decode_ms: float = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.answers += row["generated"]
        self.ttft_ms += row["ttft_sum_ms"]
        self.inter_token_ms += row["inter_token_sum_ms"]
        self.inter_tokens += row["inter_token_count"]
        self.decode_tokens += row["decode_tokens"]
        self.decode_ms += row["decode_sum_ms"]
        metrics.hist_merge(self.ttft_hist, row["ttft_hist"])
        metrics.hist_merge(self.inter_token_hist, row["inter_token_hist"])

    @property
    def tokens_per_second(self) -> float | None:
        """Decoding speed: the tokens after each answer's first over the time from its first to its last."""
        return round(self.decode_tokens / (self.decode_ms / 1000), 3) if self.decode_ms > 0 else None

    def summary(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "ttft_ms": {
                "mean": round(self.ttft_ms / self.answers, 4) if self.answers else None,
                **metrics.quantiles(self.ttft_hist, QUANTILES),
            },
            "inter_token_ms": {
                "mean": round(self.inter_token_ms / self.inter_tokens, 4) if self.inter_tokens else None,
                **metrics.quantiles(self.inter_token_hist, QUANTILES),
            },
            "output_tokens_per_second": self.tokens_per_second,
            "decode_tokens": self.decode_tokens,
        }


@dataclass
class Totals:
    """Summed aggregates of some MetricBucket rows."""

    count: int = 0
    errors: int = 0
    latency_ms: float = 0.0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    batch_rows: int = 0
    payload_bytes: int = 0
    hist: dict[str, int] = field(default_factory=dict)
    batch_hist: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    generation: GenerationTotals = field(default_factory=GenerationTotals)

    def add(self, row: dict[str, Any]) -> None:
        self.count += row["count"]
        self.errors += row["errors"]
        self.latency_ms += row["latency_sum_ms"]
        self.queue_ms += row["queue_sum_ms"]
        self.compute_ms += row["compute_sum_ms"]
        self.batch_rows += row["batch_size_sum"]
        self.payload_bytes += row["payload_bytes"]
        metrics.hist_merge(self.hist, row["latency_hist"])
        metrics.hist_merge(self.batch_hist, row["batch_hist"])
        metrics.hist_merge(self.statuses, row["status_counts"])
        if row["generated"]:
            self.generation.add(row)

    def summary(self) -> dict[str, Any]:
        ok = self.count - self.errors
        return {
            "count": self.count,
            "errors": self.errors,
            "error_rate": round(self.errors / self.count, 6) if self.count else None,
            "latency_ms": {
                "mean": round(self.latency_ms / self.count, 4) if self.count else None,
                **metrics.quantiles(self.hist, QUANTILES),
            },
            "queue_ms": {"mean": round(self.queue_ms / ok, 4) if ok else None},
            "compute_ms": {"mean": round(self.compute_ms / ok, 4) if ok else None},
            "batch_size": {
                "mean": round(self.batch_rows / ok, 3) if ok else None,
                "histogram": batch_histogram(self.batch_hist),
            },
            "payload_bytes": self.payload_bytes,
            "status_counts": dict(sorted(self.statuses.items())),
            **({"generation": self.generation.summary()} if self.generation.answers else {}),
        }


FIELDS = (
    "version_id",
    "minute",
    "source",
    "alias",
    "count",
    "errors",
    "latency_sum_ms",
    "queue_sum_ms",
    "compute_sum_ms",
    "batch_size_sum",
    "payload_bytes",
    "latency_hist",
    "batch_hist",
    "status_counts",
    "generated",
    "ttft_sum_ms",
    "ttft_hist",
    "inter_token_sum_ms",
    "inter_token_count",
    "inter_token_hist",
    "decode_tokens",
    "decode_sum_ms",
)


def batch_histogram(hist: dict[str, int]) -> dict[str, int]:
    """Batch-size buckets with readable names: '1', '2', '3-4', '5-8', …"""
    named = {}
    for key in sorted(hist, key=int):
        k = int(key)
        low, high = (2 ** (k - 1) + 1 if k else 1), 2**k
        named[str(high) if low == high else f"{low}-{high}"] = hist[key]
    return named


def version_stats(model: RegisteredModel, window: str, number: int | None = None) -> dict[str, Any]:
    """Triton-style statistics of a model's versions over a window (one version when `number` is given)."""
    versions = model.versions.order_by("version")
    if number is not None:
        versions = versions.filter(version=number)
        if not versions.exists():
            raise NotFound(f"Version {number} of model {model.name!r} not found.")
    per_version: dict[int, Totals] = defaultdict(Totals)
    by_source: dict[int, dict[str, Totals]] = defaultdict(lambda: defaultdict(Totals))
    by_alias: dict[int, dict[str, Totals]] = defaultdict(lambda: defaultdict(Totals))
    for row in buckets_since(window, versions).values(*FIELDS):
        per_version[row["version_id"]].add(row)
        by_source[row["version_id"]][row["source"]].add(row)
        by_alias[row["version_id"]][row["alias"] or "(pinned)"].add(row)
    span, _ = WINDOWS[window]
    stats = []
    for version in versions:
        totals = per_version[version.pk]
        generative = version.task == TextTask.TEXT_GENERATION or totals.generation.answers
        stats.append({
            "name": model.name, "version": str(version.version), "status": version.status,
            "aliases": sorted(a.name for a in version.aliases.all()),
            "inference_count": totals.batch_rows, "execution_count": totals.count,
            "requests_per_second": round(totals.count / span.total_seconds(), 4),
            **totals.summary(),
            "by_source": {k: v.summary() for k, v in sorted(by_source[version.pk].items())},
            # Generation timing alone (no requests) sits in the row without an alias: not an alias's traffic.
            "by_alias": {k: {"count": v.count, "errors": v.errors} for k, v in sorted(by_alias[version.pk].items())
                         if v.count},
            **({"generation": totals.generation.summary()} if generative else {}),
        })  # fmt: skip
    return {"window": window, "since": (timezone.now() - span).isoformat(), "model_stats": stats}


def series(window: str, versions: QuerySet[ModelVersion] | None = None, *, split: bool = False) -> dict[str, Any]:
    """Time series of a window in steps (minute / 15 min / hour): totals, or per version with `split`."""
    span, step = WINDOWS[window]
    now = timezone.now()
    start = int((now - span).timestamp() // step * step)
    points = int(span.total_seconds() // step) + 1
    cells: dict[Any, list[Totals]] = defaultdict(lambda: [Totals() for _ in range(points)])
    overall = Totals()
    labels: dict[int, str] = {}
    rows = buckets_since(window, versions).values(*FIELDS, "version__version", "version__model__name")
    for row in rows:
        slot = int((row["minute"].timestamp() - start) // step)
        if not 0 <= slot < points:
            continue
        key = row["version_id"] if split else "all"
        labels[row["version_id"]] = f"{row['version__model__name']} v{row['version__version']}"
        cells[key][slot].add(row)
        overall.add(row)
    times = [datetime.fromtimestamp(start + i * step, tz=now.tzinfo).isoformat() for i in range(points)]
    out = []
    for key, slots in cells.items():
        out.append({
            "name": labels[key] if split else "all models",
            "rps": [round(t.count / step, 4) for t in slots],
            "error_rate": [round(t.errors / t.count, 4) if t.count else None for t in slots],
            "p50": [metrics.quantiles(t.hist, (0.5,))["p50"] for t in slots],
            "p95": [metrics.quantiles(t.hist, (0.95,))["p95"] for t in slots],
            "p99": [metrics.quantiles(t.hist, (0.99,))["p99"] for t in slots],
            "queue_ms": [round(t.queue_ms / (t.count - t.errors), 4) if t.count > t.errors else None for t in slots],
            "compute_ms": [round(t.compute_ms / (t.count - t.errors), 4) if t.count > t.errors else None
                           for t in slots],
            "generated": sum(t.generation.answers for t in slots),
            "ttft_p50": [metrics.quantiles(t.generation.ttft_hist, (0.5,))["p50"] for t in slots],
            "ttft_p95": [metrics.quantiles(t.generation.ttft_hist, (0.95,))["p95"] for t in slots],
            "inter_token_p50": [metrics.quantiles(t.generation.inter_token_hist, (0.5,))["p50"] for t in slots],
            "inter_token_mean": [round(t.generation.inter_token_ms / t.generation.inter_tokens, 4)
                                 if t.generation.inter_tokens else None for t in slots],
            "tokens_per_second": [t.generation.tokens_per_second for t in slots],
        })  # fmt: skip
    return {"window": window, "step_seconds": step, "times": times, "series": sorted(out, key=lambda s: s["name"]),
            "totals": overall.summary()}  # fmt: skip
