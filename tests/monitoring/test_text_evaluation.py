"""Evaluation of a Hugging Face text classifier end to end in-process: a JSON lines or CSV dataset
of labelled texts, a run on the run engine (eager Celery), the metrics, comparison page and gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from inference import validation
from inference.cache import model_cache
from monitoring import scoring, services
from monitoring.models import EvaluationDataset
from portal import demo_text
from portal.text_models import directory_zip
from registry import services as registry_services
from registry.text_tasks import TextTask

pytestmark = pytest.mark.django_db

REVIEWS = [
    ("What a wonderful film!", "positive"),
    ("I loved this book.", "positive"),
    ("The concert was brilliant.", "positive"),
    ("A delightful meal.", "positive"),
    ("The hotel was awful.", "negative"),
    ("I hated this game.", "negative"),
    ("The service was terrible.", "negative"),
    ("What a boring show.", "negative"),
]


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_text.sentiment_build(tmp_path_factory.mktemp("sentiment") / "model")


@pytest.fixture
def reviews(owner, sentiment_dir, tmp_path):
    """The sentiment demo model uploaded and validated as `reviews` v1 (production)."""
    model_cache().reset()
    demo = demo_text.TextDemo("reviews", TextTask.TEXT_CLASSIFICATION, "reviews", "v1", ("test",),
                              lambda _: sentiment_dir)  # fmt: skip
    model = demo_text.text_demo_upload(owner, demo, tmp_path)
    yield model.versions.get(version=1)
    model_cache().reset()


def jsonl_file(rows, name="reviews.jsonl"):
    content = "".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows)
    return SimpleUploadedFile(name, content.encode())


def evaluate(api, owner, dataset, captured, version=1):
    with captured(execute=True):
        body = {"model": "reviews", "version": version, "dataset": dataset, "batch_size": 3}
        response = api(owner).post("/api/v1/evaluations/", body, format="json")
    assert response.status_code == 201, response.json()
    return api(owner).get(f"/api/v1/evaluations/{response.json()['id']}/").json()


@pytest.mark.celery_eager
def test_a_json_lines_dataset_evaluates_a_text_classifier_to_the_direct_figures(
    api, owner, reviews, django_capture_on_commit_callbacks
):
    # Labels as names, and one as an index (1 is positive).
    rows = [*REVIEWS[:-1], (REVIEWS[-1][0], 0)]
    response = api(owner).post("/api/v1/models/reviews/datasets/", {"name": "held-out", "file": jsonl_file(rows)},
                               format="multipart")  # fmt: skip
    assert response.status_code == 201, response.json()
    assert response.json()["task"] == "classification" and response.json()["rows"] == 8
    assert EvaluationDataset.objects.get(name="held-out").source_format == "jsonl"
    run = evaluate(api, owner, "held-out", django_capture_on_commit_callbacks)
    assert run["status"] == "succeeded", run["error"]
    labels = np.array([0 if label in ("negative", 0) else 1 for _, label in rows])
    texts = np.array([text for text, _ in REVIEWS])
    scores = model_cache().get(reviews.pk).predict({"text": texts})[0][2]
    expected = scoring.classification_scores(scores, labels)
    assert run["metrics"]["accuracy"] == pytest.approx(expected["accuracy"]) == 1.0
    assert run["metrics"]["confusion_matrix"] == expected["confusion_matrix"] == [[4, 0], [0, 4]]
    assert run["metrics"]["log_loss"] == pytest.approx(expected["log_loss"], rel=1e-4)
    assert run["metrics"]["batches"] == 3 and run["progress"] == 100.0


@pytest.mark.celery_eager
def test_a_csv_dataset_of_texts_evaluates_and_the_comparison_page_shows_it(
    api, client, owner, reviews, django_capture_on_commit_callbacks
):
    lines = ["text,label", *[f'"{text}",{label}' for text, label in REVIEWS]]
    file = SimpleUploadedFile("reviews.csv", "\n".join(lines).encode())
    dataset = services.dataset_create(actor=owner, model=reviews.model, name="csv", file=file, filename="reviews.csv")
    assert dataset.rows == 8 and dataset.num_classes == 2
    run = evaluate(api, owner, "csv", django_capture_on_commit_callbacks)
    assert run["status"] == "succeeded", run["error"]
    assert run["metrics"]["accuracy"] == 1.0
    client.force_login(owner)
    page = client.get("/models/reviews/compare/")
    assert page.status_code == 200
    assert "csv" in page.content.decode()


def test_a_bad_text_dataset_is_a_400_naming_the_line_and_nothing_is_written(api, owner, reviews):
    rows = [*REVIEWS[:2], ("Meh.", "neutral")]
    response = api(owner).post("/api/v1/models/reviews/datasets/", {"name": "bad", "file": jsonl_file(rows)},
                               format="multipart")  # fmt: skip
    assert response.status_code == 400
    assert "Line 3: unknown label 'neutral'" in response.json()["error"]
    assert not EvaluationDataset.objects.exists()


@pytest.mark.celery_eager
def test_the_promotion_gate_evaluates_a_text_candidate_on_its_dataset(
    api, owner, reviews, sentiment_dir, tmp_path, django_capture_on_commit_callbacks
):
    dataset = services.dataset_create(actor=owner, model=reviews.model, name="gate", file=jsonl_file(REVIEWS),
                                      filename="gate.jsonl")  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        services.evaluation_start(actor=owner, version=reviews, dataset=dataset)
    services.gate_set(actor=owner, model=reviews.model, dataset=dataset, tolerance=0.01)
    archive = tmp_path / "v2.zip"
    directory_zip(sentiment_dir, archive)
    with archive.open("rb") as stream:
        candidate = registry_services.version_upload(
            actor=owner, model=reviews.model, file=SimpleUploadedFile("v2.zip", stream.read()), filename="v2.zip",
            task=TextTask.TEXT_CLASSIFICATION, enqueue=False,
        )  # fmt: skip
    assert validation.version_validate(candidate.pk) == "ready"
    put = {"version": 2}
    with django_capture_on_commit_callbacks(execute=True):
        first = api(owner).put("/api/v1/models/reviews/aliases/production/", put, format="json")
    assert first.status_code == 409 and first.json()["code"] == "gate_refused"
    second = api(owner).put("/api/v1/models/reviews/aliases/production/", put, format="json")
    assert second.status_code == 200, second.json()
