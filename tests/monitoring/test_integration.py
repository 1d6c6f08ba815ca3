"""Monitoring end to end: traffic through the gateway and a real worker, then the aggregates,
the Prometheus exposition, and an evaluation run on the worker checked against a direct computation."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests
from django.core.files import File
from django.db.models import Sum

from accounts import services as token_services
from core import redis as shared_redis
from core.invalidation import INVALIDATE_CHANNEL
from inference import jobs
from monitoring import metrics, services
from monitoring.models import EvaluationRun, MetricBucket
from registry import services as registry_services
from tests.monitoring.conftest import direct_outputs, npz_file
from tests.worker import METRICS_AUTH

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LABELS = ["setosa", "versicolor", "virginica"]


@pytest.fixture
def token(owner: Any, gateway_url: str) -> str:
    shared_redis.client().publish(INVALIDATE_CHANNEL, "test")
    return token_services.token_create(user=owner, name="monitoring")[1]


@pytest.fixture
def production(owner: Any, registered_model: Any, ready_version: Any) -> Any:
    version = ready_version(labels=LABELS)
    registry_services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    return version


def exposition(gateway_url: str) -> dict[str, float]:
    text = requests.get(f"{gateway_url}/metrics", headers=METRICS_AUTH, timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def settled_exposition(gateway_url: str, timeout: float = 30.0) -> dict[str, float]:
    """The exposition once earlier tests' predictions have all been applied.

    Each process applies what it recorded every DRAIN_SECONDS: a prediction answered just
    before this test must not land inside this test's delta. Settled means the request
    counters stayed put over a few drains (gauges such as memory move on their own).
    """

    def counters(samples: dict[str, float]) -> dict[str, float]:
        return {key: value for key, value in samples.items() if key.startswith("maas_requests_total")}

    previous = exposition(gateway_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(3 * metrics.DRAIN_SECONDS)
        current = exposition(gateway_url)
        if counters(current) == counters(previous):
            return current
        previous = current
    raise AssertionError("the request counters kept moving with no traffic")


def wait_for(condition: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def test_traffic_through_a_worker_is_aggregated_and_exposed(gateway_url, token, production, owner, worker):
    key = 'model="iris",source="v2",status="{}",version="1"'
    before = settled_exposition(gateway_url)
    url = f"{gateway_url}/v2/models/iris/infer"
    headers = {"Authorization": f"Bearer {token}"}
    good = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    bad = {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [5.1, 3.5, 1.4]}]}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: requests.post(url, json=body, headers=headers, timeout=20),
                                [good] * 40 + [bad] * 3))  # fmt: skip
    assert [a.status_code for a in answers].count(200) == 40 and [a.status_code for a in answers].count(400) == 3

    rows = MetricBucket.objects.filter(version=production, source="v2")
    wait_for(lambda: rows.aggregate(n=Sum("count"))["n"] == 43)
    totals = services.Totals()
    for row in rows.values(*services.FIELDS):
        totals.add(row)
    assert (totals.count, totals.errors) == (43, 3)
    assert totals.statuses == {"200": 40, "400": 3}
    assert sum(totals.hist.values()) == 43 and totals.batch_rows >= 40
    assert totals.compute_ms > 0 and {r.alias for r in rows} == {"production"}
    # The figures the workers reported per request are the ones summed.
    reported = sum(a.json()["parameters"]["compute_ms"] for a in answers if a.status_code == 200)
    assert totals.compute_ms == pytest.approx(reported, rel=0.01)

    stats = requests.get(f"{gateway_url}/api/v1/models/iris/stats/", headers=headers, timeout=10).json()
    assert stats["model_stats"][0]["count"] == 43 and stats["model_stats"][0]["latency_ms"]["p99"] > 0
    # The same figures on the protocol's side, as Triton serves them: model, version, alias.
    for path in ("iris/stats", "iris/versions/1/stats", "iris/versions/production/stats?window=day"):
        on_v2 = requests.get(f"{gateway_url}/v2/models/{path}", headers=headers, timeout=10)
        assert on_v2.status_code == 200, on_v2.text
        assert [(s["version"], s["count"]) for s in on_v2.json()["model_stats"]] == [("1", 43)]
    assert (
        requests.get(f"{gateway_url}/v2/models/iris/stats?window=year", headers=headers, timeout=10).status_code == 400
    )
    assert requests.get(f"{gateway_url}/v2/models/nope/stats", headers=headers, timeout=10).status_code == 404
    assert (
        requests.get(f"{gateway_url}/v2/models/iris/versions/9/stats", headers=headers, timeout=10).status_code == 404
    )

    after = exposition(gateway_url)
    assert (
        after[f"maas_requests_total{{{key.format(200)}}}"] - before.get(f"maas_requests_total{{{key.format(200)}}}", 0)
        == 40
    )
    assert (
        after[f"maas_requests_total{{{key.format(400)}}}"] - before.get(f"maas_requests_total{{{key.format(400)}}}", 0)
        == 3
    )
    compute = 'maas_compute_seconds_count{model="iris",source="v2",version="1"}'
    assert after[compute] - before.get(compute, 0) == 40
    assert any(k.startswith("maas_batch_size_bucket") for k in after)

    # Worker gauges come with its heartbeat (every 2 s): wait for the one after the model loaded.
    def gauges_after_load() -> dict[str, float] | None:
        now = exposition(gateway_url)
        return now if any(k.startswith("maas_worker_models_loaded") and v >= 1 for k, v in now.items()) else None

    gauges = wait_for(gauges_after_load)
    assert any(k.startswith("maas_worker_memory_bytes") and v > 1e6 for k, v in gauges.items())

    # A batch job's chunks are recorded by the worker that runs them.
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, features=x)
    buffer.seek(0)
    jobs.job_submit(actor=owner, model_name="iris", file=File(buffer, name="x.npz"), filename="x.npz", chunk_size=10)
    job_rows = MetricBucket.objects.filter(version=production, source="job")
    wait_for(lambda: job_rows.aggregate(n=Sum("batch_size_sum"))["n"] == 30)
    assert job_rows.aggregate(n=Sum("count"))["n"] == 3


def _expected(outputs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The metrics computed directly, without the portal's scoring module."""
    predicted = outputs.argmax(axis=1)
    classes = outputs.shape[1]
    exp = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    f1 = []
    for c in range(classes):
        tp = int(np.sum((predicted == c) & (labels == c)))
        fp = int(np.sum((predicted == c) & (labels != c)))
        fn = int(np.sum((predicted != c) & (labels == c)))
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    top2 = np.argsort(-outputs, axis=1)[:, :2]
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "top_k_accuracy": float(np.mean([labels[i] in top2[i] for i in range(len(labels))])),
        "macro_f1": float(np.mean(f1)),
        "log_loss": float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels]))),
        "confusion_matrix": [[int(np.sum((labels == t) & (predicted == p))) for p in range(classes)]
                             for t in range(classes)],
    }  # fmt: skip


def test_an_evaluation_run_on_a_worker_matches_a_direct_computation(production, owner, worker, iris_data, model_files):
    features, labels = iris_data
    # Some wrong labels, so that every metric is away from its perfect value.
    labels = labels.copy()
    labels[::7] = (labels[::7] + 1) % 3
    dataset = services.dataset_create(actor=owner, model=production.model, name="holdout",
                                      file=npz_file(features=features, labels=labels), filename="h.npz")  # fmt: skip
    run = services.evaluation_start(actor=owner, version=production, dataset=dataset, batch_size=25)
    run = wait_for(lambda: EvaluationRun.objects.filter(pk=run.pk, status__in=["succeeded", "failed"]).first(), 60)
    assert run.status == "succeeded", run.error
    expected = _expected(direct_outputs(model_files["torchscript"], features), labels)
    got = run.metrics
    assert got["top_k"] == 2
    for name in ("accuracy", "top_k_accuracy", "macro_f1", "log_loss"):
        assert got[name] == pytest.approx(expected[name], abs=1e-5), name
    assert got["confusion_matrix"] == expected["confusion_matrix"]
    assert got["batches"] == 5 and len(got["batch_ms"]) == 5 and got["throughput_rows_per_s"] > 0
    assert run.rows_done == 120 and run.attempts == 1
