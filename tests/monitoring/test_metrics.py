"""The aggregator, its histogram quantiles, the figures and the stats endpoint (in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitoring import charts, metrics, services
from monitoring.metrics import prometheus as prom
from monitoring.models import MetricBucket

pytestmark = pytest.mark.django_db


def test_histogram_quantiles_are_within_five_percent_of_the_exact_ones():
    latencies = np.random.default_rng(1).lognormal(mean=0.5, sigma=1.0, size=20_000)
    hist: dict[str, int] = {}
    for ms in latencies:
        index = metrics.latency_bucket(float(ms))
        hist[str(index)] = hist.get(str(index), 0) + 1
    got = metrics.quantiles(hist, (0.5, 0.95, 0.99))
    for q in (50, 95, 99):
        exact = float(np.percentile(latencies, q))
        assert abs(got[f"p{q}"] - exact) / exact < 0.05, (q, got, exact)


def _record(version, n: int, *, status: int = 200, ms: float = 2.0, source: str = "native") -> None:
    for _ in range(n):
        metrics.recorder.record(version_id=version.pk, model=version.model.name, version=version.version,
                                source=source, alias="production", status=status, total_ms=ms, queue_ms=0.5,
                                compute_ms=1.0, batch_size=4, payload_bytes=64)  # fmt: skip


def test_flushes_merge_into_one_row_per_minute_and_stats_sum_them(ready_version, api, owner):
    version = ready_version()
    metrics.recorder.reset()
    _record(version, 30)
    assert metrics.recorder.flush() == 1
    _record(version, 10, status=503, ms=40.0)
    metrics.recorder.flush()
    row = MetricBucket.objects.get(version=version)
    assert (row.count, row.errors, row.batch_size_sum) == (40, 10, 120)
    assert sum(row.latency_hist.values()) == 40
    assert row.status_counts == {"200": 30, "503": 10}

    body = api(owner).get("/api/v1/models/iris/stats/").json()
    stats = body["model_stats"][0]
    assert stats["version"] == "1" and stats["count"] == 40 and stats["errors"] == 10
    assert stats["error_rate"] == 0.25
    assert stats["latency_ms"]["p50"] == pytest.approx(2.0, rel=0.05)
    assert stats["latency_ms"]["p99"] == pytest.approx(40.0, rel=0.05)
    assert stats["queue_ms"]["mean"] == 0.5 and stats["batch_size"]["mean"] == 4
    assert stats["by_source"]["native"]["count"] == 40
    one = api(owner).get("/api/v1/models/iris/versions/1/stats/?window=week").json()
    assert one["window"] == "week" and len(one["model_stats"]) == 1


def test_stats_of_an_unknown_model_or_version_or_window_are_clear_4xx(api, owner, outsider, ready_version):
    ready_version()
    client = api(owner)
    response = client.get("/api/v1/models/nope/stats/")
    assert response.status_code == 404 and "nope" in response.json()["error"]
    assert client.get("/api/v1/models/iris/versions/9/stats/").status_code == 404
    response = client.get("/api/v1/models/iris/stats/?window=year")
    assert response.status_code == 400 and "hour, day, week" in response.json()["error"]
    # Another user's private model does not exist for them.
    assert api(outsider).get("/api/v1/models/iris/stats/").status_code == 404


def test_traffic_figures_carry_the_recorded_points(ready_version):
    version = ready_version()
    metrics.recorder.reset()
    _record(version, 12)
    metrics.recorder.flush()
    series = services.series("hour")
    figures = charts.traffic_figures(series)
    assert charts.has_data(figures["rps"]) and charts.has_data(figures["latency"])
    assert sum(v for v in figures["rps"]["data"][0]["y"] if v) == pytest.approx(12 / 60)
    assert charts.batch_size_figure(series["totals"]["batch_size"]["histogram"])["data"][0]["x"] == ["3-4"]
    assert not charts.has_data(charts.traffic_figures(services.series("hour", version.model.versions.none()))["rps"])
    # One slow outlier must not flatten the latency charts: they offer a log scale.
    for name in ("latency", "queue_compute"):
        buttons = figures[name]["layout"]["updatemenus"][0]["buttons"]
        assert [b["args"][0]["yaxis.type"] for b in buttons] == ["linear", "log"]
    # Three significant figures on the axis and in tooltips; queue and compute told apart by colour.
    assert figures["latency"]["layout"]["yaxis"]["hoverformat"] == ".3~g"
    queue, compute = figures["queue_compute"]["data"]
    assert queue["line"]["color"] != compute["line"]["color"]
    assert figures["errors"]["layout"]["yaxis"]["title"]["text"] == "share of requests"


def test_prometheus_exposition_counts_recorded_predictions(client, ready_version, settings):
    settings.METRICS_TOKEN = "scrape-secret"
    version = ready_version()

    def count() -> float:
        text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").content.decode()
        key = f'maas_requests_total{{model="iris",source="job",status="200",version="{version.version}"}}'
        lines = [line for line in text.splitlines() if line.startswith(key)]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = count()
    _record(version, 7, source="job")
    assert count() == before + 7


def test_metrics_need_the_token_or_a_staff_session_and_trust_no_address(client, settings, django_user_model):
    settings.METRICS_TOKEN = "scrape-secret"
    for address in ("127.0.0.1", "::1", "10.1.2.3"):
        refused = client.get("/metrics", REMOTE_ADDR=address)
        assert refused.status_code == 401 and "METRICS_TOKEN" in refused.json()["error"], address
        assert refused["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200
    client.force_login(django_user_model.objects.create_user("viewer"))
    assert client.get("/metrics").status_code == 403
    client.force_login(django_user_model.objects.create_user("operator", is_staff=True))
    assert client.get("/metrics").status_code == 200
    # Without a token configured, only staff sessions; METRICS_PUBLIC opens it to anyone, explicitly.
    settings.METRICS_TOKEN = ""
    client.logout()
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer ").status_code == 401
    settings.METRICS_PUBLIC = True
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200


VENDORED_PLOTLY = Path(__file__).resolve().parents[2] / "static" / "vendor" / "plotly-cartesian.min.js"
VENDORED_PLOTLY_SHA256 = "79542150855a52c567260e3137095dbe2b744e6d702a5cabe67da246942fba7a"
# What plotly.js's cartesian bundle registers (its README); the charts may use only these.
CARTESIAN_TRACES = {"scatter", "bar", "box", "heatmap", "histogram", "histogram2d", "histogram2dcontour", "contour",
                    "image", "pie"}  # fmt: skip


def test_vendored_plotly_is_the_cartesian_bundle_of_the_pinned_release():
    import hashlib
    import re

    import plotly

    shipped = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text()[:200]
    vendored = VENDORED_PLOTLY.read_bytes()
    assert hashlib.sha256(vendored).hexdigest() == VENDORED_PLOTLY_SHA256
    release = re.search(r"plotly\.js v(\S+)", shipped)
    assert release and f"(cartesian - minified) v{release[1]}" in vendored[:200].decode()


def test_charts_use_only_trace_types_of_the_vendored_bundle():
    import re

    source = (Path(__file__).resolve().parents[2] / "monitoring" / "charts.py").read_text()
    traces = set(re.findall(r'"data": \[\{"type": "(\w+)"', source))
    traces |= set(re.findall(r'return \{"type": "(\w+)"', source))
    traces |= set(re.findall(r'^\s+"type": "(\w+)", "name"', source, re.MULTILINE))
    assert {"scatter", "bar", "heatmap"} <= traces <= CARTESIAN_TRACES, traces


def test_grafana_dashboard_queries_only_metrics_the_portal_exports():
    import json
    import re

    path = Path(__file__).resolve().parents[2] / "monitoring" / "grafana" / "maas-portal-dashboard.json"
    dashboard = json.loads(path.read_text())
    families = (prom.REQUESTS, prom.LATENCY, prom.QUEUE, prom.COMPUTE, prom.BATCH, prom.PAYLOAD, prom.MODELS_LOADED,
                prom.WORKER_MEMORY, prom.GPU_MEMORY, prom.GPU_UTILISATION, prom.PROMPT_TOKENS,
                prom.COMPLETION_TOKENS, prom.TTFT, prom.INTER_TOKEN, prom.OUTPUT_SPEED, prom.RUNNING_SEQUENCES,
                prom.WAITING_SEQUENCES, prom.CACHE_TOKENS, prom.CACHE_RESERVED, prom.CACHE_BUDGET)  # fmt: skip
    exported = {family._name for family in families}
    # Rows group panels and query nothing.
    used = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
            for name in re.findall(r"maas_[a-z_]+", target["expr"])}  # fmt: skip
    assert used and all(re.sub(r"_(bucket|total|count|sum)$", "", name) in exported for name in used), used
    # Every family the portal exports has a panel: generation's included.
    assert exported <= {re.sub(r"_(bucket|total|count|sum)$", "", name) for name in used}, exported
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_aggregates_older_than_the_retention_are_pruned(ready_version, settings):
    from datetime import timedelta

    from django.utils import timezone

    version = ready_version()
    old = MetricBucket.objects.create(version=version, minute=timezone.now() - timedelta(days=40), source="v2",
                                      process="p", count=1)  # fmt: skip
    recent = MetricBucket.objects.create(version=version, minute=timezone.now(), source="v2", process="p", count=1)
    settings.METRICS_RETENTION_DAYS = 30
    assert metrics.buckets_prune() == 1
    assert list(MetricBucket.objects.values_list("pk", flat=True)) == [recent.pk] and old.pk != recent.pk


def _histogram_samples(registry: Any) -> dict[str, dict[tuple[str, str | None], float]]:
    samples: dict[str, dict[tuple[str, str | None], float]] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_created"):
                samples.setdefault(sample.labels["k"], {})[(sample.name, sample.labels.get("le"))] = sample.value
    return samples


def test_bulk_histogram_add_writes_what_observe_writes():
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    histogram = Histogram("bulk_check", "test", ["k"], buckets=metrics.LATENCY_BUCKETS, registry=registry)
    values = [0.0, 0.0005, 0.0007, 0.001, 0.3, 2.5, 31.0, 1e-9, 0.025]
    for value in values:
        histogram.labels("observed").observe(value)
    metrics.histogram_add(histogram.labels("bulk"), values)
    samples = _histogram_samples(registry)
    assert samples["bulk"] == pytest.approx(samples["observed"])
    assert samples["bulk"][("bulk_check_count", None)] == len(values)


def test_bulk_histogram_add_falls_back_to_observe_without_the_value_objects():
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    histogram = Histogram("fallback_check", "test", ["k"], buckets=metrics.LATENCY_BUCKETS, registry=registry)
    values = [0.0007, 0.3, 31.0]
    for value in values:
        histogram.labels("observed").observe(value)

    class PublicOnly:
        """A histogram child of another prometheus-client version: observe() and nothing private."""

        def __init__(self, child: Any) -> None:
            self.observe = child.observe

    metrics.histogram_add(PublicOnly(histogram.labels("fallback")), values)
    samples = _histogram_samples(registry)
    assert samples["fallback"] == pytest.approx(samples["observed"])
