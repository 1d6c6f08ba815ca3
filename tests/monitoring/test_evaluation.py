"""Evaluation datasets and runs, each refused input, and the promotion gate (eager tasks, real models)."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from monitoring import scoring, services
from monitoring.models import EvaluationDataset, EvaluationRun, PromotionGate, RunStatus
from registry import services as registry_services
from registry.models import AuditEvent
from tests.monitoring.conftest import direct_outputs, npz_file

pytestmark = pytest.mark.django_db

URL = "/api/v1/models/iris/datasets/"


def upload(client, file, name="holdout", **extra):
    return client.post(URL, {"name": name, "file": file, **extra}, format="multipart")


def assert_nothing_written(settings):
    assert not EvaluationDataset.objects.exists()
    root = settings.STORAGES["artifacts"]["OPTIONS"]["location"]
    from pathlib import Path

    assert not list(Path(root).glob("evaluation/**/*.npz"))


@pytest.fixture
def production(owner, registered_model, ready_version):
    version = ready_version(labels=["setosa", "versicolor", "virginica"])
    registry_services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    return version


@pytest.mark.parametrize(
    ("make", "status", "words"),
    [
        (lambda x, y: npz_file(features=x[:, :3], labels=y), 400, "has shape [120, 3]; the model expects [N, 4]"),
        (lambda x, y: npz_file(features=x, labels=np.where(y == 2, 7, y)), 400, "class 7, outside the classifier's 3"),
        (lambda x, y: npz_file(features=x[:0], labels=y[:0]), 400, "no rows"),
        (lambda x, y: SimpleUploadedFile("empty.npz", b""), 400, "empty"),
        (lambda x, y: npz_file(features=x), 400, "neither 'labels' nor 'targets'"),
        (lambda x, y: npz_file(inputs=x, labels=y), 400, "has no array named 'features'"),
        (lambda x, y: SimpleUploadedFile("d.csv", b"a,b,c,label\n1,2,3,0\n"), 400, "3 feature column(s)"),
        (lambda x, y: SimpleUploadedFile("d.csv", b"a,b,c,d\n1,2,3,0\n"), 400, "no 'label'"),
        (lambda x, y: SimpleUploadedFile("d.csv", b"a,b,c,d,label\n1,,3,4,0\n"), 400, "column 'b' is empty"),
    ],
    ids=["shapes", "labels-out-of-range", "no-rows", "empty-file", "no-labels", "wrong-input-name",
         "csv-missing-column", "csv-no-label", "csv-empty-cell"],
)  # fmt: skip
def test_bad_datasets_are_refused_naming_the_problem(api, owner, production, iris_data, settings, make, status, words):
    response = upload(api(owner), make(*iris_data))
    assert response.status_code == status, response.json()
    assert words in response.json()["error"]
    assert_nothing_written(settings)


def test_a_dataset_over_the_size_limit_is_413(api, owner, production, iris_data, settings):
    settings.EVALUATION_DATASET_MAX_BYTES = 1000
    response = upload(api(owner), npz_file(features=iris_data[0], labels=iris_data[1]))
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert_nothing_written(settings)


def test_only_the_owner_uploads_and_outsiders_see_nothing(api, member, outsider, production, iris_data):
    assert upload(api(outsider), npz_file(features=iris_data[0], labels=iris_data[1])).status_code == 404
    assert api(outsider).get("/api/v1/evaluations/").json() == []


def test_evaluation_of_a_version_that_is_not_ready_is_409(api, owner, production, iris_data):
    assert upload(api(owner), npz_file(features=iris_data[0], labels=iris_data[1])).status_code == 201
    registry_services.version_archive(actor=owner, version=production, force=True)
    response = api(owner).post("/api/v1/evaluations/", {"model": "iris", "version": 1, "dataset": "holdout"},
                               format="json")  # fmt: skip
    assert response.status_code == 409 and "archived" in response.json()["error"]
    assert not EvaluationRun.objects.exists()


@pytest.mark.celery_eager
def test_csv_dataset_with_class_names_evaluates_to_the_direct_figures(
    api, owner, production, iris_data, model_files, django_capture_on_commit_callbacks
):
    features, labels = iris_data
    names = np.array(["setosa", "versicolor", "virginica"])[labels]
    lines = ["sl,sw,pl,pw,label"] + [
        ",".join([*map(str, row), name]) for row, name in zip(features, names, strict=True)
    ]
    response = upload(api(owner), SimpleUploadedFile("iris.csv", "\n".join(lines).encode()), name="csv")
    assert response.status_code == 201, response.json()
    assert response.json()["task"] == "classification" and response.json()["rows"] == 120
    with django_capture_on_commit_callbacks(execute=True):
        response = api(owner).post("/api/v1/evaluations/", {"model": "iris", "version": 1, "dataset": "csv",
                                                           "batch_size": 32}, format="json")  # fmt: skip
    assert response.status_code == 201
    run = api(owner).get(f"/api/v1/evaluations/{response.json()['id']}/").json()
    assert run["status"] == "succeeded", run["error"]
    outputs = direct_outputs(model_files["torchscript"], features.astype(np.float32))
    expected = scoring.classification_scores(outputs, labels)
    assert run["metrics"]["accuracy"] == pytest.approx(float((outputs.argmax(1) == labels).mean()), abs=1e-6)
    assert run["metrics"]["confusion_matrix"] == expected["confusion_matrix"]
    assert run["metrics"]["batches"] == 4 and run["progress"] == 100.0


def test_regression_metrics():
    predictions = np.array([[1.0], [2.0], [4.0]])
    targets = np.array([1.5, 2.0, 3.0])
    scores = scoring.regression_scores(predictions, targets)
    assert scores["mae"] == pytest.approx(0.5)
    assert scores["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1) / 3))
    assert scores["r2"] == pytest.approx(1 - 1.25 / np.sum((targets - targets.mean()) ** 2))


def test_a_run_interrupted_too_often_fails_with_its_reason(owner, production, iris_data):
    dataset = services.dataset_create(actor=owner, model=production.model, name="d", file=npz_file(
        features=iris_data[0], labels=iris_data[1]), filename="d.npz")  # fmt: skip
    run = services.evaluation_start(actor=owner, version=production, dataset=dataset)
    EvaluationRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, attempts=services.MAX_RUN_ATTEMPTS)
    assert services.evaluation_execute(str(run.pk)) == RunStatus.FAILED
    run.refresh_from_db()
    assert run.status == "failed" and "interrupted 3 times" in run.error


# --- the promotion gate -------------------------------------------------------------------------


@pytest.fixture
def gated(owner, production, ready_version, iris_data, api, django_capture_on_commit_callbacks):
    """v1 in production with a finished run; v2 a worse candidate; a gate on accuracy."""
    features, _ = iris_data
    # Labels chosen so that v1 is right on every row and v2 (a relabelled copy) is not.
    v1_predictions = direct_outputs_from(production, features)
    dataset = services.dataset_create(
        actor=owner,
        model=production.model,
        name="gate",
        file=npz_file(features=features, labels=v1_predictions),
        filename="g.npz",
    )
    candidate = ready_version(labels=["setosa", "versicolor", "virginica"])
    services.gate_set(actor=owner, model=production.model, dataset=dataset, tolerance=0.01)
    with django_capture_on_commit_callbacks(execute=True):
        services.evaluation_start(actor=owner, version=production, dataset=dataset)
    return production, candidate, dataset


def direct_outputs_from(version, features):
    from inference.cache import model_cache

    return model_cache().get(version.pk).predict({"features": features})[0][2].argmax(axis=1)


def promote(api, user, version, **extra):
    return api(user).put("/api/v1/models/iris/aliases/production/", {"version": version, **extra}, format="json")


@pytest.mark.celery_eager
def test_gate_starts_an_evaluation_and_refuses_until_it_has_passed(
    api, owner, gated, django_capture_on_commit_callbacks
):
    production, candidate, _ = gated
    # Same weights as v1: once its run is done it passes.
    with django_capture_on_commit_callbacks(execute=True):
        response = promote(api, owner, candidate.version)
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "gate_refused" and "no finished evaluation" in body["error"]
    assert body["figures"]["pending_run"]
    run = EvaluationRun.objects.get(pk=body["figures"]["pending_run"])
    assert run.status == "succeeded"  # ran eagerly on commit
    response = promote(api, owner, candidate.version)
    assert response.status_code == 200, response.json()
    assert production.model.aliases.get(name="production").version == candidate


@pytest.mark.celery_eager
def test_gate_refuses_a_worse_version_with_the_figures_and_override_is_audited(
    api, owner, gated, django_capture_on_commit_callbacks
):
    production, candidate, dataset = gated
    # A run of the candidate whose accuracy is worse than production's minus the tolerance.
    bad = EvaluationRun.objects.create(
        version=candidate,
        dataset=dataset,
        batch_size=8,
        total_rows=dataset.rows,
        status=RunStatus.SUCCEEDED,
        metrics={"accuracy": 0.5, "latency_ms": {"p95": 1}},
    )
    bad.finished_at = bad.created_at
    bad.save()
    response = promote(api, owner, candidate.version)
    assert response.status_code == 409
    body = response.json()
    assert "accuracy 0.5 is below the required 0.99" in body["error"]
    assert body["figures"]["baseline_value"] == 1.0 and body["figures"]["candidate_value"] == 0.5
    assert production.model.aliases.get(name="production").version == production

    response = promote(api, owner, candidate.version, force=True)
    assert response.status_code == 200
    event = AuditEvent.objects.get(action="gate.override")
    assert event.actor == owner and event.after["forced"] and event.after["candidate_value"] == 0.5
    # Roll back is never gated.
    assert api(owner).post("/api/v1/models/iris/aliases/production/rollback/").status_code == 200


def test_gate_with_a_latency_bound_refuses_a_slow_version(api, owner, gated):
    production, candidate, dataset = gated
    services.gate_set(actor=owner, model=production.model, dataset=dataset, tolerance=0.5, max_p95_ms=0.000001)
    EvaluationRun.objects.create(
        version=candidate,
        dataset=dataset,
        batch_size=8,
        total_rows=dataset.rows,
        status=RunStatus.SUCCEEDED,
        metrics={"accuracy": 0.9, "latency_ms": {"p95": 3.0}},
    )
    response = promote(api, owner, candidate.version)
    assert response.status_code == 409 and "p95 batch latency 3 ms is above the bound" in response.json()["error"]


def test_gate_api_validates_its_settings(api, owner, gated, member):
    client = api(owner)
    response = client.put("/api/v1/models/iris/gate/", {"dataset": "gate", "metric": "rmse"}, format="json")
    assert response.status_code == 400 and "does not apply to a classification dataset" in response.json()["error"]
    assert client.put("/api/v1/models/iris/gate/", {"dataset": "nope"}, format="json").status_code == 404
    assert client.get("/api/v1/models/iris/gate/").json()["dataset"] == "gate"
    assert client.delete("/api/v1/models/iris/gate/").status_code == 204
    assert client.get("/api/v1/models/iris/gate/").status_code == 404


def test_gate_form_on_the_comparison_page_sets_and_removes_the_gate(client, owner, production, iris_data):
    services.dataset_create(actor=owner, model=production.model, name="d", filename="d.npz",
                            file=npz_file(features=iris_data[0], labels=iris_data[1]))  # fmt: skip
    client.force_login(owner)
    page = client.get("/models/iris/compare/")
    assert page.status_code == 200 and b"gate-form" in page.content
    response = client.post("/models/iris/gate/", {"dataset": "d", "metric": "accuracy", "tolerance": "0.05",
                                                  "max_p95_ms": "abc", "enabled": "on"})  # fmt: skip
    assert response.status_code == 302 and not PromotionGate.objects.exists()
    assert "max_p95_ms must be a number" in client.get("/models/iris/compare/").content.decode()
    client.post("/models/iris/gate/", {"dataset": "d", "metric": "accuracy", "tolerance": "0.05", "enabled": "on"})
    gate = production.model.promotion_gate
    assert gate.tolerance == 0.05 and gate.enabled
    assert AuditEvent.objects.filter(action="gate.set").exists()
    client.post("/models/iris/gate/", {"remove": "1"})
    assert not PromotionGate.objects.filter(model=production.model).exists()


def test_a_running_evaluation_whose_worker_went_silent_is_failed_by_the_sweep_not_by_a_read(
    api, owner, production, iris_data
):
    from datetime import timedelta

    from django.utils import timezone

    from inference.tasks import runs_expire_stale

    dataset = services.dataset_create(actor=owner, model=production.model, name="d", filename="d.npz",
                                      file=npz_file(features=iris_data[0], labels=iris_data[1]))  # fmt: skip
    run = services.evaluation_start(actor=owner, version=production, dataset=dataset)
    EvaluationRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, worker="gpu-3:41", attempts=3,
                                                   heartbeat_at=timezone.now() - timedelta(days=1))  # fmt: skip
    # Reading is only reading: the page and the API show the run as it is.
    assert api(owner).get(f"/api/v1/evaluations/{run.pk}/").json()["status"] == "running"
    assert api(owner).get("/api/v1/evaluations/").json()[0]["status"] == "running"
    assert EvaluationRun.objects.get(pk=run.pk).status == "running"
    assert runs_expire_stale()["monitoring.EvaluationRun"] == 1
    body = api(owner).get(f"/api/v1/evaluations/{run.pk}/").json()
    assert body["status"] == "failed" and "stopped reporting" in body["error"] and "gpu-3:41" in body["error"]
    assert "start it again" in body["error"]


def test_deleting_a_gated_model_takes_its_datasets_runs_and_gate_and_their_files(
    owner, gated, django_capture_on_commit_callbacks
):
    from registry.artifacts import artifact_storage

    production, _, dataset = gated
    model = production.model
    assert artifact_storage().exists(dataset.path) and EvaluationRun.objects.filter(dataset=dataset).exists()
    with django_capture_on_commit_callbacks(execute=True):
        registry_services.model_delete(actor=owner, model=model, force=True)  # it serves under production
    assert not EvaluationDataset.objects.filter(pk=dataset.pk).exists()
    assert not PromotionGate.objects.filter(model_id=model.pk).exists()
    assert not EvaluationRun.objects.filter(dataset_id=dataset.pk).exists()
    assert not artifact_storage().exists(dataset.path)


@pytest.mark.celery_eager
def test_an_evaluation_started_in_the_browser_lands_on_its_live_status_without_a_stale_flash(
    client, owner, production, iris_data, django_capture_on_commit_callbacks
):
    services.dataset_create(actor=owner, model=production.model, name="d", filename="d.npz",
                            file=npz_file(features=iris_data[0], labels=iris_data[1]))  # fmt: skip
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):  # the run finishes before its page is drawn
        response = client.post("/models/iris/evaluate/", {"version": "1", "dataset": "d"})
    run = EvaluationRun.objects.get()
    assert response.status_code == 302 and response.url == f"/evaluations/{run.pk}/"
    page = client.get(response.url).content.decode()
    assert 'data-status="succeeded"' in page and 'class="messages"' not in page
