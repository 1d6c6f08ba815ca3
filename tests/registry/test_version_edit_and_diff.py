"""The version page's inline edit (description, tags; audited, offered only to who may change the
model) and the version comparison (rows that differ, ?only=differences, metrics from monitoring)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from monitoring.models import EvaluationDataset, EvaluationRun, RunStatus, TaskType
from registry import services
from registry.models import AuditEvent, ModelVersion
from tests.conftest import upload_file

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_versions(owner, registered_model, model_files):
    first = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False, source={"dataset": "a"})
    second = upload_file(
        owner, registered_model, model_files["exported_program"], enqueue=False, parent_version=1,
        source={"dataset": "b", "run_url": "https://runs.example.com/2"}, tags="team=vision",
    )  # fmt: skip
    return first, second


def test_the_version_page_edits_description_and_tags_inline_and_audits_it(client, owner, two_versions):
    client.force_login(owner)
    page = client.get("/models/iris/versions/1/").content.decode()
    assert 'id="version-edit"' in page and 'action="/models/iris/versions/1/edit/"' in page
    response = client.post("/models/iris/versions/1/edit/", {"description": "first cut", "tags": "baseline, team=ml"})
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert "Saved description, tags." in page and "first cut" in page
    version = ModelVersion.objects.get(version=1)
    assert sorted(version.tags.values_list("name", flat=True)) == ["baseline", "team=ml"]
    event = AuditEvent.objects.filter(action="version.update").get()
    assert event.before["description"] == "" and event.after["tags"] == ["baseline", "team=ml"]
    assert event.actor_name == "olivia" and event.object_repr == "v1"


def test_a_bad_tag_saves_nothing(client, owner, two_versions):
    client.force_login(owner)
    response = client.post("/models/iris/versions/1/edit/", {"description": "x", "tags": "ok, not ok!"}, follow=True)
    assert "Not saved: Invalid tag" in response.content.decode()
    assert ModelVersion.objects.get(version=1).description == ""
    assert not AuditEvent.objects.filter(action="version.update").exists()


def test_a_viewer_is_not_offered_the_edit_and_is_refused_if_posting(client, owner, member, registered_model,
                                                                    two_versions):  # fmt: skip
    services.role_grant(actor=owner, model=registered_model, role="viewer", username=member.username)
    client.force_login(member)
    page = client.get("/models/iris/versions/1/").content.decode()
    assert 'id="version-edit"' not in page and "/versions/1/edit/" not in page
    response = client.post("/models/iris/versions/1/edit/", {"description": "taken", "tags": ""}, follow=True)
    assert "Not saved:" in response.content.decode()
    assert ModelVersion.objects.get(version=1).description == ""
    assert AuditEvent.objects.filter(action="authz.denied").exists()


def test_a_maintainer_may_edit_a_version(client, owner, member, registered_model, two_versions):
    services.role_grant(actor=owner, model=registered_model, role="maintainer", username=member.username)
    client.force_login(member)
    assert 'id="version-edit"' in client.get("/models/iris/versions/1/").content.decode()
    client.post("/models/iris/versions/1/edit/", {"description": "by a maintainer", "tags": ""})
    assert ModelVersion.objects.get(version=1).description == "by a maintainer"


def test_the_api_patch_edits_description_and_tags_and_refuses_a_viewer(api, owner, member, registered_model,
                                                                       two_versions):  # fmt: skip
    response = api(owner).patch("/api/v1/models/iris/versions/1/", {"description": "d", "tags": ["k=v"]}, format="json")
    assert response.status_code == 200 and response.json()["tags"] == ["k=v"]
    services.role_grant(actor=owner, model=registered_model, role="viewer", username=member.username)
    response = api(member).patch("/api/v1/models/iris/versions/1/", {"description": "no"}, format="json")
    assert response.status_code == 403
    assert ModelVersion.objects.get(version=1).description == "d"


def test_an_outsider_cannot_see_the_comparison(client, outsider, two_versions):
    client.force_login(outsider)
    assert client.get("/models/iris/versions/diff/?v=1&v=2").status_code == 404


def test_the_comparison_marks_what_differs_and_hides_the_rest_on_request(client, owner, two_versions):
    client.force_login(owner)
    page = client.get("/models/iris/versions/diff/?v=1&v=2").content.decode()
    assert 'id="version-diff"' in page
    for label in ("Format", "Size", "max_batch_size", "Derived from", "Dataset", "Tags"):
        assert f'<th scope="row">{label}</th>' in page, label
    assert '<a href="https://runs.example.com/2" rel="noopener noreferrer nofollow">' in page
    assert '<a href="/models/iris/versions/1/" rel="noopener noreferrer nofollow">v1</a>' in page
    same = page.split('<th scope="row">max_batch_size</th>')[0].rsplit("<tr", 1)[1]
    assert 'data-differs="false"' in same and " hidden" not in same
    only = client.get("/models/iris/versions/diff/?v=1&v=2&only=differences").content.decode()
    same = only.split('<th scope="row">max_batch_size</th>')[0].rsplit("<tr", 1)[1]
    assert 'data-differs="false"' in same and " hidden" in same
    differs = only.split('<th scope="row">Format</th>')[0].rsplit("<tr", 1)[1]
    assert 'data-differs="true"' in differs and " hidden" not in differs
    assert 'id="diff-only" checked' in only


def test_the_comparison_shows_latest_evaluation_per_dataset(client, owner, registered_model, two_versions):
    first, second = two_versions
    holdout = EvaluationDataset.objects.create(
        model=registered_model, name="holdout", task=TaskType.CLASSIFICATION, source_format="npz", path="x.npz",
        rows=10, size_bytes=100, num_classes=3,
    )  # fmt: skip
    # v1's older run (0.5) is not its latest.
    for minutes_ago, version, accuracy in ((9, first, 0.5), (5, first, 0.91), (1, second, 0.97)):
        EvaluationRun.objects.create(
            dataset=holdout, version=version, batch_size=32, total_rows=10, rows_done=10,
            status=RunStatus.SUCCEEDED, finished_at=timezone.now() - dt.timedelta(minutes=minutes_ago),
            metrics={"accuracy": accuracy, "macro_f1": 0.8, "latency_ms": {"p95": 1.5}},
        )  # fmt: skip
    client.force_login(owner)
    page = client.get("/models/iris/versions/diff/?v=1&v=2").content.decode()
    row = page.split('<th scope="row">holdout · accuracy</th>')[1].split("</tr>")[0]
    assert ">0.91</a>" in row and ">0.97</a>" in row and "0.5" not in row
    f1 = page.split('<th scope="row">holdout · macro_f1</th>')[0].rsplit("<tr", 1)[1]
    assert 'data-differs="false"' in f1


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("?v=1", 400, "Choose two or more versions"),
        ("?v=1&v=x", 400, "&#x27;x&#x27; is not a version number"),
        ("?v=1&v=2&v=3&v=4&v=5&v=6&v=7", 400, "at most 6 versions"),
        ("?v=1&v=9", 404, ""),
        ("", 200, "Choose two or more versions above"),
        ("?v=1,2", 200, 'id="version-diff"'),
    ],
)
def test_the_comparison_answers_bad_choices_clearly(client, owner, two_versions, query, status, text):
    client.force_login(owner)
    response = client.get(f"/models/iris/versions/diff/{query}")
    assert response.status_code == status
    assert text in response.content.decode()


def test_the_model_page_offers_the_comparison(client, owner, two_versions):
    client.force_login(owner)
    page = client.get("/models/iris/").content.decode()
    assert 'id="version-diff-form"' in page and 'action="/models/iris/versions/diff/"' in page
    assert page.count('form="version-diff-form"') == 2


def test_the_comparisons_queries_do_not_grow_with_versions(client, owner, registered_model, model_files):
    for number in range(6):
        upload_file(owner, registered_model, model_files["torchscript"], enqueue=False, tags=f"n={number}")
    client.force_login(owner)
    counts = []
    for query in ("?v=1&v=2", "?v=1&v=2&v=3&v=4&v=5&v=6"):
        with CaptureQueriesContext(connection) as captured:
            assert client.get(f"/models/iris/versions/diff/{query}").status_code == 200
        counts.append(len(captured))
    assert counts[0] == counts[1], counts


def test_the_version_page_links_the_comparison_with_production(client, owner, registered_model, ready_version):
    ready_version(), ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    client.force_login(owner)
    page = client.get("/models/iris/versions/2/").content.decode()
    assert 'id="diff-production" href="/models/iris/versions/diff/?v=1&amp;v=2"' in page
    assert 'id="diff-production"' not in client.get("/models/iris/versions/1/").content.decode()
