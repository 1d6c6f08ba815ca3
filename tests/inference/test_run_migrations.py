"""Moving batch jobs and evaluation runs onto the tracked-run engine keeps every existing row."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("inference", "0001_initial"), ("monitoring", "0001_initial")]


@pytest.mark.django_db(transaction=True)
def test_rows_written_before_the_engine_migrations_survive_them(ready_version):
    version = ready_version()
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    job_id, run_id = uuid.uuid4(), uuid.uuid4()
    old.get_model("inference", "BatchJob").objects.create(
        id=job_id, version_id=version.pk, model_name="iris", version_number=1, status="running", error="",
        input_format="npz", result_format="jsonl", input_path="jobs/x/input.npz", total_rows=10, rows_done=4,
        rows_saved=4, parts=["jobs/x/parts/0.npz"], chunk_size=2, attempts=1, cancel_requested=True,
    )  # fmt: skip
    dataset = old.get_model("monitoring", "EvaluationDataset").objects.create(
        model_id=version.model_id, name="d", task="classification", source_format="npz", path="e/d.npz", rows=10,
        size_bytes=1,
    )  # fmt: skip
    old.get_model("monitoring", "EvaluationRun").objects.create(
        id=run_id, version_id=version.pk, dataset_id=dataset.pk, status="succeeded", batch_size=5, total_rows=10,
        rows_done=10, attempts=1, metrics={"accuracy": 0.9},
    )  # fmt: skip

    executor = MigrationExecutor(connection)
    # Forward to the latest migrations, so that the tests after this one find the schema they expect.
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(latest)
    new = executor.loader.project_state(latest).apps
    job = new.get_model("inference", "BatchJob").objects.get(pk=job_id)
    assert (job.status, job.rows_done, job.rows_saved, job.parts, job.attempts, job.cancel_requested, job.worker) == (
        "running", 4, 4, ["jobs/x/parts/0.npz"], 1, True, "")  # fmt: skip
    run = new.get_model("monitoring", "EvaluationRun").objects.get(pk=run_id)
    assert (run.status, run.rows_done, run.metrics, run.cancel_requested, run.worker) == (
        "succeeded", 10, {"accuracy": 0.9}, False, "")  # fmt: skip
