"""Housekeeping on Celery beat: the schedule, its tasks, and nothing periodic inside a request."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from inference.models import BatchJob
from inference.tasks import runs_expire_stale
from monitoring import metrics
from monitoring.models import EvaluationDataset, EvaluationRun, MetricBucket
from monitoring.tasks import metrics_prune
from portal.celery import app

pytestmark = pytest.mark.django_db

LONG_AGO = timedelta(days=1)


def test_the_beat_schedule_names_registered_tasks_each_expiring_before_its_next_run():
    # What a worker registers: the tasks modules of every installed app.
    app.loader.import_default_modules()
    schedule = app.conf.beat_schedule
    assert {entry["task"] for entry in schedule.values()} == {
        "inference.tasks.runs_expire_stale",
        "monitoring.tasks.metrics_prune",
    }
    for name, entry in schedule.items():
        assert entry["task"] in app.tasks, name
        assert 0 < entry["options"]["expires"] < entry["schedule"], name


@pytest.fixture
def stale_runs(owner: Any, ready_version: Any) -> tuple[BatchJob, EvaluationRun]:
    """A batch job and an evaluation that say `running` but whose worker went silent a day ago,
    at their retry limit (below it, the sweep queues them again: tests/inference/test_runs.py)."""
    version = ready_version()
    job = BatchJob.objects.create(
        version=version, model_name="iris", version_number=1, created_by=owner, input_format="npz",
        result_format="npz", input_path="jobs/x/input.npz", total_rows=3, chunk_size=1, status="running",
        heartbeat_at=timezone.now() - LONG_AGO, attempts=3,
    )  # fmt: skip
    dataset = EvaluationDataset.objects.create(
        model=version.model, name="d", task="classification", source_format="npz", path="evaluation/d.npz",
        rows=3, size_bytes=1,
    )  # fmt: skip
    evaluation = EvaluationRun.objects.create(
        version=version, dataset=dataset, batch_size=1, total_rows=3, created_by=owner, status="running",
        heartbeat_at=timezone.now() - LONG_AGO, attempts=3,
    )  # fmt: skip
    return job, evaluation


def test_the_sweep_task_fails_stale_jobs_and_evaluations_at_their_retry_limit_with_a_reason(stale_runs):
    job, evaluation = stale_runs
    counts = runs_expire_stale.apply().get()
    assert counts == {"inference.BatchJob": 1, "inference.ConversionRun": 0, "monitoring.EvaluationRun": 1}
    job.refresh_from_db()
    evaluation.refresh_from_db()
    assert job.status == "failed" and "stopped reporting" in job.error and "submit it again" in job.error
    assert evaluation.status == "failed" and "stopped reporting" in evaluation.error
    assert set(runs_expire_stale.apply().get().values()) == {0}


def test_reading_pages_and_the_api_changes_no_run(client, api, owner, stale_runs):
    job, evaluation = stale_runs
    client.force_login(owner)
    model = evaluation.version.model.name
    for url in ["/jobs/", f"/jobs/{job.pk}/", f"/evaluations/{evaluation.pk}/", f"/models/{model}/compare/"]:
        assert client.get(url).status_code == 200, url
    for url in [
        "/api/v1/jobs/",
        f"/api/v1/jobs/{job.pk}/",
        "/api/v1/evaluations/",
        f"/api/v1/evaluations/{evaluation.pk}/",
    ]:
        assert api(owner).get(url).status_code == 200, url
    assert BatchJob.objects.get(pk=job.pk).status == "running"
    assert EvaluationRun.objects.get(pk=evaluation.pk).status == "running"


def test_metric_retention_is_a_beat_task_not_part_of_a_flush(ready_version, settings):
    version = ready_version()
    settings.METRICS_RETENTION_DAYS = 30
    metrics.recorder.reset()  # what earlier tests in this process recorded
    old = MetricBucket.objects.create(version=version, minute=timezone.now() - timedelta(days=40), source="v2",
                                      process="p", count=1)  # fmt: skip
    metrics.recorder.record(version_id=version.pk, model="iris", version=1, source="v2", alias="", status=200,
                            total_ms=1.0, compute_ms=1.0, batch_size=1)  # fmt: skip
    assert metrics.recorder.flush() == 1
    assert MetricBucket.objects.filter(pk=old.pk).exists()  # a flush writes, it does not prune
    assert metrics_prune.apply().get() == 1
    assert not MetricBucket.objects.filter(pk=old.pk).exists()
    assert MetricBucket.objects.count() == 1
