"""The log-spaced latency histogram of the serving aggregates, and quantiles read from it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

# Bucket i holds latencies in [BASE * RATIO**i, BASE * RATIO**(i+1)) ms: 2**(1/8) apart,
# so a quantile read from it is within about 4.5 % of the true value, from 10 µs to 10 min.
HIST_BASE_MS = 0.01
HIST_RATIO = 2 ** (1 / 8)
HIST_BUCKETS = 208
_LOG_RATIO = math.log(HIST_RATIO)


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a latency in milliseconds."""
    if ms <= HIST_BASE_MS:
        return 0
    return min(HIST_BUCKETS - 1, int(math.log(ms / HIST_BASE_MS) / _LOG_RATIO))


def bucket_value(index: int) -> float:
    """The geometric middle of a bucket, in milliseconds."""
    return HIST_BASE_MS * HIST_RATIO ** (index + 0.5)


def batch_bucket(size: int) -> int:
    """Batch sizes in powers of two: bucket k holds sizes up to 2**k."""
    return max(0, (max(1, size) - 1).bit_length())


def quantiles(hist: dict[Any, int], qs: Iterable[float]) -> dict[str, float | None]:
    """p-quantiles (e.g. 0.5, 0.95) in ms from a merged histogram {bucket: count}."""
    items = sorted((int(k), v) for k, v in hist.items() if v)
    total = sum(v for _, v in items)
    result: dict[str, float | None] = {}
    for q in qs:
        key = f"p{round(q * 100):d}"
        if not total:
            result[key] = None
            continue
        rank, seen = q * total, 0
        for index, count in items:
            seen += count
            if seen >= rank:
                result[key] = round(bucket_value(index), 4)
                break
    return result


def hist_merge(into: dict[str, int], other: dict[Any, int]) -> dict[str, int]:
    """Add one histogram into another (JSON keys are strings)."""
    for key, count in other.items():
        into[str(key)] = into.get(str(key), 0) + int(count)
    return into


# --- Prometheus ---------------------------------------------------------------------------
