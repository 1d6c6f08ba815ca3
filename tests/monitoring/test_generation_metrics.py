"""Generation metrics: the sink's timing of generated answers (aggregates, stats, Prometheus),
the engines' load gauges, and the model page's generation charts."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import reverse

from inference import telemetry
from inference.telemetry import GenerationLoad
from monitoring import charts, metrics, services
from monitoring.models import MetricBucket
from registry.models import ModelVersion
from registry.text_tasks import TextTask
from tests.worker import METRICS_AUTH

pytestmark = pytest.mark.django_db


@pytest.fixture
def generative(ready_version: Any) -> Any:
    """A ready version marked as a text-generation one (the aggregates only read its task)."""
    made = ready_version()
    ModelVersion.objects.filter(pk=made.pk).update(task=TextTask.TEXT_GENERATION)
    made.refresh_from_db()
    metrics.recorder.reset()
    yield made
    metrics.recorder.reset()


def answer(version: Any, *, ttft_ms: float, gaps: list[float], tokens: int, source: str = "v1") -> None:
    """One streamed answer reported the way the gateway reports it: a Sample with its timing, then done()."""
    sample = telemetry.Sample(version.pk, version.model.name, version.version, None, source=source)
    sample.prompt_tokens = 5
    sample.completion_tokens = tokens
    sample.generation = {"ttft_ms": ttft_ms, "inter_token_ms": gaps, "decode_ms": sum(gaps)}
    sample.done(200)


def exposition(client: Any) -> str:
    return client.get("/metrics", headers=METRICS_AUTH).content.decode()


def sample_value(text: str, name: str, **labels: str) -> float:
    """The value of one series of the exposition (0 when absent); labels in any order."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()) and len(found) == len(labels):
            return float(line.split()[-1])
    return 0.0


def test_generated_answers_are_aggregated_into_the_minute_without_an_alias(generative):
    answer(generative, ttft_ms=80.0, gaps=[10.0, 12.0, 14.0], tokens=4)
    answer(generative, ttft_ms=120.0, gaps=[20.0] * 9, tokens=10)
    metrics.recorder.flush()
    timed = MetricBucket.objects.get(version=generative, alias="")
    assert (timed.count, timed.generated, timed.inter_token_count, timed.decode_tokens) == (0, 2, 12, 12)
    assert timed.ttft_sum_ms == pytest.approx(200.0)
    assert timed.inter_token_sum_ms == pytest.approx(216.0)
    assert timed.decode_sum_ms == pytest.approx(216.0)
    assert sum(timed.ttft_hist.values()) == 2 and sum(timed.inter_token_hist.values()) == 12
    # The requests themselves are counted under the alias they used, as before.
    assert MetricBucket.objects.get(version=generative, alias="production").count == 2

    # A second flush merges into the same row.
    answer(generative, ttft_ms=100.0, gaps=[], tokens=1)
    metrics.recorder.flush()
    timed.refresh_from_db()
    assert (timed.generated, timed.decode_tokens, timed.inter_token_count) == (3, 12, 12)


def test_stats_report_ttft_inter_token_latency_and_output_speed_of_a_generative_version(generative, api, owner):
    for _ in range(19):
        answer(generative, ttft_ms=50.0, gaps=[10.0] * 4, tokens=5)
    answer(generative, ttft_ms=900.0, gaps=[40.0] * 4, tokens=5)
    metrics.recorder.flush()
    stats = api(owner).get("/api/v1/models/iris/versions/1/stats/").json()["model_stats"][0]
    generation = stats["generation"]
    assert generation["answers"] == 20 and generation["decode_tokens"] == 80
    assert generation["ttft_ms"]["p50"] == pytest.approx(50.0, rel=0.05)
    assert generation["ttft_ms"]["p99"] == pytest.approx(900.0, rel=0.05)
    assert generation["ttft_ms"]["mean"] == pytest.approx((19 * 50 + 900) / 20)
    assert generation["inter_token_ms"]["mean"] == pytest.approx((76 * 10 + 4 * 40) / 80)
    # 80 tokens after the first ones, decoded in 19 * 40 + 160 ms.
    assert generation["output_tokens_per_second"] == pytest.approx(80 / 0.92, rel=1e-3)
    assert stats["by_source"]["v1"]["generation"]["answers"] == 20
    # The row that holds only timing is no alias's traffic.
    assert stats["by_alias"] == {"production": {"count": 20, "errors": 0}}
    # The gateway's /v2/models/<name>/stats reads the same figures through the telemetry sink.
    v2 = telemetry.stats(generative.model, None, generative.version)["model_stats"][0]
    assert v2["generation"] == generation


def test_a_version_that_does_not_generate_has_no_generation_stats(ready_version, api, owner):
    ready_version()
    metrics.recorder.reset()
    stats = api(owner).get("/api/v1/models/iris/stats/").json()["model_stats"][0]
    assert "generation" not in stats


def test_a_generative_version_without_answers_reports_empty_generation_stats(generative, api, owner):
    generation = api(owner).get("/api/v1/models/iris/stats/").json()["model_stats"][0]["generation"]
    assert generation["answers"] == 0 and generation["ttft_ms"]["p50"] is None
    assert generation["output_tokens_per_second"] is None


def test_prometheus_observes_ttft_every_gap_and_the_output_speed(client, generative):
    labels = {"model": "iris", "version": str(generative.version), "source": "v1"}
    before = exposition(client)
    answer(generative, ttft_ms=30.0, gaps=[4.0, 6.0, 30.0], tokens=4)  # 3 tokens in 40 ms: 75 tokens/s
    after = exposition(client)

    def gained(name: str, **extra: str) -> float:
        return sample_value(after, name, **labels, **extra) - sample_value(before, name, **labels, **extra)

    assert gained("maas_time_to_first_token_seconds_count") == 1
    assert gained("maas_time_to_first_token_seconds_sum") == pytest.approx(0.03)
    assert gained("maas_time_to_first_token_seconds_bucket", le="0.025") == 0
    assert gained("maas_time_to_first_token_seconds_bucket", le="0.05") == 1
    assert gained("maas_inter_token_latency_seconds_count") == 3
    assert gained("maas_inter_token_latency_seconds_bucket", le="0.005") == 1
    assert gained("maas_inter_token_latency_seconds_bucket", le="0.01") == 2
    assert gained("maas_inter_token_latency_seconds_sum") == pytest.approx(0.04)
    assert gained("maas_output_tokens_per_second_count") == 1
    assert gained("maas_output_tokens_per_second_sum") == pytest.approx(75.0)
    assert gained("maas_completion_tokens_total") == 0  # labelled by model and version only
    assert sample_value(after, "maas_completion_tokens_total", model="iris", version=str(generative.version)) >= 4


def test_a_one_token_answer_has_no_output_speed(client, generative):
    labels = {"model": "iris", "version": str(generative.version), "source": "v1"}
    before = sample_value(exposition(client), "maas_output_tokens_per_second_count", **labels)
    answer(generative, ttft_ms=30.0, gaps=[], tokens=1)
    text = exposition(client)
    assert sample_value(text, "maas_output_tokens_per_second_count", **labels) == before
    assert sample_value(text, "maas_time_to_first_token_seconds_count", **labels) >= 1


def test_engine_gauges_follow_the_worker_reports_and_zero_the_engines_that_went_away(client):
    worker = "gauge-test@host"
    telemetry.generation_load(worker, [
        GenerationLoad(version_id=1, model="chat", version=1, running=3, waiting=2, cached_tokens=700,
                       reserved_tokens=900, budget_tokens=4096),
        GenerationLoad(version_id=2, model="chat", version=2, running=1, waiting=0, cached_tokens=50,
                       reserved_tokens=80, budget_tokens=4096),
    ])  # fmt: skip
    text = exposition(client)
    one = {"worker": worker, "model": "chat", "version": "1"}
    two = {"worker": worker, "model": "chat", "version": "2"}
    assert sample_value(text, "maas_generation_running_sequences", **one) == 3
    assert sample_value(text, "maas_generation_waiting_sequences", **one) == 2
    assert sample_value(text, "maas_generation_kv_cache_tokens", **one) == 700
    assert sample_value(text, "maas_generation_kv_cache_reserved_tokens", **one) == 900
    assert sample_value(text, "maas_generation_kv_cache_budget_tokens", **two) == 4096

    # Version 1's engine went away (unloaded); version 2's stays.
    telemetry.generation_load(worker, [
        GenerationLoad(version_id=2, model="chat", version=2, running=4, waiting=1, cached_tokens=60,
                       reserved_tokens=90, budget_tokens=4096),
    ])  # fmt: skip
    text = exposition(client)
    for name in ("maas_generation_running_sequences", "maas_generation_waiting_sequences",
                 "maas_generation_kv_cache_tokens", "maas_generation_kv_cache_budget_tokens"):  # fmt: skip
        assert sample_value(text, name, **one) == 0, name
    assert sample_value(text, "maas_generation_running_sequences", **two) == 4
    telemetry.generation_load(worker, [])
    assert sample_value(exposition(client), "maas_generation_running_sequences", **two) == 0


def test_generation_figures_show_each_version_ttft_gaps_and_speed(generative):
    answer(generative, ttft_ms=60.0, gaps=[10.0, 10.0], tokens=3)
    metrics.recorder.flush()
    figures = charts.generation_figures(services.series("hour", generative.model.versions.all(), split=True))
    assert set(figures) == {"ttft", "inter_token", "output_speed"}
    assert all(charts.has_data(figure) for figure in figures.values())
    p50, p95 = figures["ttft"]["data"]
    assert p50["name"] == "iris v1 p50" and p95["line"]["dash"] == "dot"
    assert [v for v in p50["y"] if v] == [pytest.approx(60.0, rel=0.05)]
    assert [v for v in figures["output_speed"]["data"][0]["y"] if v] == [pytest.approx(100.0)]
    # Versions that generated nothing in the window draw no lines.
    assert charts.generation_figures(services.series("hour", generative.model.versions.none(), split=True)) == {
        "ttft": {"data": [], "layout": figures["ttft"]["layout"]},
        "inter_token": {"data": [], "layout": figures["inter_token"]["layout"]},
        "output_speed": {"data": [], "layout": figures["output_speed"]["layout"]},
    }


def test_the_model_page_of_a_generative_model_charts_usage_and_ttft(client, owner, generative):
    answer(generative, ttft_ms=60.0, gaps=[10.0, 10.0], tokens=3)
    metrics.recorder.flush()
    client.force_login(owner)
    page = client.get("/models/iris/").content.decode()
    for key in ("tokens", "ttft", "inter_token", "output_speed"):
        assert f'data-figure="{key}"' in page, key
    figures = client.get(reverse("monitoring:model-charts", args=["iris"]) + "?window=hour").json()["figures"]
    assert charts.has_data(figures["ttft"]) and charts.has_data(figures["tokens"])
    assert charts.has_data(figures["output_speed"])


def test_the_model_page_of_a_model_that_does_not_generate_has_no_generation_charts(client, owner, ready_version):
    ready_version()
    client.force_login(owner)
    page = client.get("/models/iris/").content.decode()
    assert 'data-figure="tokens"' in page and 'data-figure="ttft"' not in page


def test_the_dashboard_charts_ttft_and_output_speed_of_the_generative_versions(client, owner, generative):
    answer(generative, ttft_ms=60.0, gaps=[10.0, 10.0], tokens=3)
    metrics.recorder.flush()
    client.force_login(owner)
    page = client.get(reverse("monitoring:dashboard")).content.decode()
    assert 'data-figure="ttft"' in page and 'data-figure="output_speed"' in page
    figures = client.get(reverse("monitoring:dashboard-data") + "?window=hour").json()["figures"]
    assert charts.has_data(figures["ttft"]) and charts.has_data(figures["output_speed"])
