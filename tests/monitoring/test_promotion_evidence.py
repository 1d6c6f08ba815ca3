"""Promotion decisions with their evidence: each version's latest evaluation in the versions
table, and a confirmation when the candidate did worse than production on the same dataset."""

from __future__ import annotations

import pytest
from django.utils import timezone

from monitoring.models import EvaluationDataset, EvaluationRun, RunStatus, TaskType
from registry import services

pytestmark = pytest.mark.django_db


def _run(dataset, version, accuracy):
    return EvaluationRun.objects.create(
        dataset=dataset, version=version, batch_size=32, total_rows=10, rows_done=10, status=RunStatus.SUCCEEDED,
        finished_at=timezone.now(), metrics={"accuracy": accuracy, "task": "classification"},
    )  # fmt: skip


def test_a_worse_candidate_asks_before_it_is_promoted(client, owner, registered_model, ready_version):
    first, second, third = ready_version(), ready_version(), ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    holdout = EvaluationDataset.objects.create(
        model=registered_model, name="holdout", task=TaskType.CLASSIFICATION, source_format="npz", path="x.npz",
        rows=10, size_bytes=100, num_classes=3,
    )  # fmt: skip
    _run(holdout, first, 0.99)
    _run(holdout, second, 0.33)
    _run(holdout, third, 0.995)
    client.force_login(owner)
    page = client.get("/models/iris/").content.decode()
    assert "accuracy 0.99 on holdout" in page and "accuracy 0.33 on holdout" in page
    warning = "v2&#x27;s accuracy on holdout is 0.33, worse than production (v1): 0.99. Promote it anyway?"
    assert f'data-confirm="{warning}"' in page
    # A better candidate is promoted without a question.
    assert page.count('data-confirm="v') == 1


def test_a_return_after_a_rollback_is_named_for_what_it_does(client, owner, registered_model, ready_version):
    ready_version(), ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=2)
    client.force_login(owner)
    assert "Roll back to v1" in client.get("/models/iris/").content.decode()
    services.alias_rollback(actor=owner, model=registered_model, name="production")
    page = client.get("/models/iris/").content.decode()
    assert "Return to v2" in page and "Roll back to v2" not in page


def test_the_model_page_confusion_matrix_is_productions_latest_run(client, owner, registered_model, ready_version):
    first, second = ready_version(), ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    holdout = EvaluationDataset.objects.create(
        model=registered_model, name="holdout", task=TaskType.CLASSIFICATION, source_format="npz", path="x.npz",
        rows=10, size_bytes=100, num_classes=2,
    )  # fmt: skip
    for version, matrix in ((first, [[5, 0], [0, 5]]), (second, [[1, 4], [4, 1]])):  # v2's run is the newer
        run = _run(holdout, version, 0.5)
        run.metrics = {**run.metrics, "confusion_matrix": matrix}
        run.save(update_fields=["metrics"])
    client.force_login(owner)
    confusion = client.get("/models/iris/charts/").json()["figures"]["confusion"]
    assert confusion["layout"]["title"]["text"] == "Confusion matrix: v1 on holdout"
    assert confusion["data"][0]["z"] == [[5, 0], [0, 5]]
    # Without production (or without a run of it) the newest run of any version is shown.
    services.alias_delete(actor=owner, model=registered_model, name="production")
    confusion = client.get("/models/iris/charts/").json()["figures"]["confusion"]
    assert confusion["layout"]["title"]["text"] == "Confusion matrix: v2 on holdout"


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.3644, "0.364"), (0.99333, "0.993"), (12.345, "12.3"), (0.000123456, "0.000123"), (75739.41, "75,739"),
     (1, "1"), (None, "—"), ("n/a", "n/a")],
)  # fmt: skip
def test_figures_on_the_evaluation_pages_have_three_significant_figures(value, shown):
    from monitoring.templatetags.evaluations import sig

    assert sig(value) == shown
