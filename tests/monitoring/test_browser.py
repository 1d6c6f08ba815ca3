"""A person in Chromium opens the monitoring dashboard, the model page and the comparison page."""

from __future__ import annotations

import time

import numpy as np
import pytest
from playwright.sync_api import expect

from inference import predict
from monitoring import metrics, services
from monitoring.models import EvaluationRun
from registry import services as registry_services
from tests.e2e.conftest import login
from tests.monitoring.conftest import npz_file

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_dashboard_and_comparison_show_charts_with_data(
    page, owner, registered_model, ready_version, worker, iris_data
):
    version = ready_version(labels=["setosa", "versicolor", "virginica"])
    registry_services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    # Real traffic through the worker from this process, flushed to the aggregates.
    metrics.recorder.reset()
    for row in np.random.default_rng(0).normal(size=(15, 1, 4)).astype(np.float32):
        predict.predict(version, {"features": row})
    metrics.recorder.flush()
    features, labels = iris_data
    dataset = services.dataset_create(actor=owner, model=registered_model, name="holdout",
                                      file=npz_file(features=features, labels=labels), filename="h.npz")  # fmt: skip
    run = services.evaluation_start(actor=owner, version=version, dataset=dataset)
    deadline = time.monotonic() + 60
    while EvaluationRun.objects.filter(pk=run.pk, status__in=["queued", "running"]).exists():
        assert time.monotonic() < deadline, "the evaluation did not finish"
        time.sleep(0.3)

    login(page, "olivia", "owner-pass-123")
    page.click("nav >> text=Monitoring")
    for chart in ("rps", "latency", "queue_compute", "batch_sizes"):
        expect(page.locator(f"#chart-{chart}")).to_have_attribute("data-has-data", "true")
    expect(page.locator("[data-totals]")).to_contain_text("15 requests")
    expect(page.locator("#chart-rps .main-svg").first).to_be_visible()

    page.goto("/models/iris/")
    expect(page.locator("#model-charts #chart-rps")).to_have_attribute("data-has-data", "true")
    page.click("text=Compare versions")
    expect(page.locator("#compare-table tr.production-row")).to_contain_text("v1")
    expect(page.locator("#compare-table")).to_contain_text("accuracy")
    for chart in ("accuracy", "confusion", "latency_versions", "traffic"):
        expect(page.locator(f"#chart-{chart}")).to_have_attribute("data-has-data", "true")
    page.click("#run-table a")
    expect(page.locator("#run-metrics")).to_contain_text("Macro F1")

    # Until plotly has run (blocked here; on a small machine, most of a second) each chart is an
    # SVG sketch drawn from the same figures: the confusion matrix's cells add up to the rows.
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route("**/plotly-cartesian*.js", lambda route: route.abort())
    page.goto(f"/models/{registered_model.name}/compare/")
    for chart in ("accuracy", "confusion", "latency_versions", "traffic"):
        expect(page.locator(f"#chart-{chart}")).to_have_attribute("data-drawn", "sketch")
        expect(page.locator(f"#chart-{chart} svg.chart-sketch")).to_be_visible()
    expect(page.locator("#chart-accuracy svg.chart-sketch rect")).to_have_count(1)
    expect(page.locator("#chart-traffic svg.chart-sketch path")).not_to_have_count(0)
    cells = page.locator("#chart-confusion svg.chart-sketch rect")
    expect(cells).to_have_count(9)
    numbers = page.locator("#chart-confusion svg.chart-sketch text").all_text_contents()
    assert sum(int(n) for n in numbers if n.isdigit()) == len(labels)
    assert page.evaluate("performance.getEntriesByName('charts-visible').length") == 1
    assert page.locator(".main-svg").count() == 0
    assert errors == []
