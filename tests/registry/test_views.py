"""Browser pages of the registry, through Django's test client."""

from __future__ import annotations

import pytest
from django.urls import reverse

from inference import validation
from registry import services
from registry.models import AuditEvent, ModelAlias, ModelVersion
from tests.conftest import upload_file

pytestmark = pytest.mark.django_db


def test_pages_require_login(client, registered_model):
    for url in ["/", "/models/iris/", "/models/iris/upload/", "/models/iris/versions/1/", "/tokens/", "/models/new/"]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url


def test_model_list_search_and_tags(client, owner, registered_model):
    services.model_create(actor=owner, name="resnet", description="image classifier", tags=["vision"])
    client.force_login(owner)
    page = client.get("/").content.decode()
    assert "iris" in page and "resnet" in page
    page = client.get("/?q=image").content.decode()
    assert "resnet" in page and ">iris<" not in page
    page = client.get("/?tag=vision").content.decode()
    assert "resnet" in page and ">iris<" not in page


def test_model_list_query_count_does_not_grow_with_models(client, owner, django_assert_max_num_queries):
    for i in range(15):
        services.model_create(actor=owner, name=f"m{i}", tags=["t"])
    client.force_login(owner)
    with django_assert_max_num_queries(10):
        assert client.get("/").status_code == 200


def test_create_model_page(client, owner):
    client.force_login(owner)
    response = client.post("/models/new/", {"name": "churn", "visibility": "private", "tags": "a,b"})
    assert response.status_code == 302 and response["Location"] == "/models/churn/upload/"
    response = client.post("/models/new/", {"name": "churn", "visibility": "private"})
    assert "already exists" in response.content.decode()


def test_model_page_shows_versions_aliases_history_and_rollback(client, owner, registered_model, ready_version):
    ready_version(), ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=2)
    client.force_login(owner)
    page = client.get("/models/iris/").content.decode()
    assert "Roll back to v1" in page
    assert page.count('data-action="promote"') == 1  # only v1: v2 already holds production
    assert page.count('data-version="') == 2
    assert 'id="alias-history"' in page


def test_promote_and_rollback_buttons(client, owner, registered_model, ready_version):
    ready_version(), ready_version()
    client.force_login(owner)
    client.post("/models/iris/aliases/", {"alias": "production", "version": 1})
    client.post("/models/iris/aliases/", {"alias": "production", "version": 2})
    assert ModelAlias.objects.get(name="production").version.version == 2
    response = client.post("/models/iris/aliases/production/rollback/", follow=True)
    assert "rolled back to version 1" in response.content.decode()
    assert ModelAlias.objects.get(name="production").version.version == 1


def test_upload_form_without_javascript(client, owner, registered_model, model_files):
    client.force_login(owner)
    with model_files["torchscript"].open("rb") as stream:
        response = client.post(
            "/models/iris/upload/",
            {"file": stream, "signature": '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}'},
        )
    assert response.status_code == 302 and response["Location"] == "/models/iris/versions/1/"
    with model_files["text"].open("rb") as stream:
        response = client.post("/models/iris/upload/", {"file": stream, "signature": "{}"})
    assert response.status_code == 400
    assert "not a PyTorch model archive" in response.content.decode()
    assert ModelVersion.objects.count() == 1


def test_upload_page_over_limit_is_413_page(client, owner, registered_model, model_files, settings):
    settings.MODEL_UPLOAD_MAX_BYTES = 1000
    client.force_login(owner)
    with model_files["torchscript"].open("rb") as stream:
        response = client.post("/models/iris/upload/", {"file": stream, "signature": "{}"})
    assert response.status_code == 413
    assert "larger than the limit" in response.content.decode()
    assert not ModelVersion.objects.exists()


def test_version_page_shows_signature_figures_and_failure_reason(
    client, owner, registered_model, ready_version, model_files
):
    ready_version(labels=["a", "b", "c"])
    client.force_login(owner)
    page = client.get("/models/iris/versions/1/").content.decode()
    assert "output__0" in page and "Parameters" in page and "a, b, c" in page
    bad = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 9]}]}

    version = upload_file(owner, registered_model, model_files["torchscript"], signature=bad, enqueue=False)
    validation.version_validate(version.pk)
    page = client.get("/models/iris/versions/2/").content.decode()
    assert "forward pass failed" in page and "Validate again" in page


def test_version_page_says_what_validation_is_doing(client, owner, registered_model, model_files):
    version = upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    client.force_login(owner)
    assert "Waiting for a worker to validate this version" in client.get("/models/iris/versions/1/").content.decode()
    ModelVersion.objects.filter(pk=version.pk).update(status="validating")
    page = client.get("/models/iris/versions/1/").content.decode()
    assert "A worker is validating this version" in page and "Validation is validating" not in page


def test_outsider_gets_404_for_private_model_pages(client, outsider, registered_model):
    client.force_login(outsider)
    assert client.get("/models/iris/").status_code == 404
    assert client.post("/models/iris/aliases/", {"alias": "production", "version": 1}).status_code == 404
    assert client.post("/models/iris/delete/").status_code == 404


def test_version_actions_archive_and_delete(client, owner, registered_model, ready_version):
    ready_version()
    client.force_login(owner)
    client.post("/models/iris/versions/1/archive/")
    assert ModelVersion.objects.get().status == "archived"
    client.post("/models/iris/versions/1/delete/")
    assert not ModelVersion.objects.exists()


def test_api_docs_page_is_served_locally(client, owner):
    client.force_login(owner)
    page = client.get("/api/v1/docs/").content.decode()
    assert "swagger-ui" in page
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in page
    assert "cdn" not in page.lower()
    # The portal's navigation stays around it.
    assert 'class="topbar"' in page and 'href="/monitoring/"' in page and owner.username in page


def test_model_list_pages_keep_the_search(client, owner):
    for i in range(30):
        services.model_create(actor=owner, name=f"net-{i:02d}", description="vision")
    client.force_login(owner)
    page = client.get("/?q=vision").content.decode()
    assert "Page 1 of 2" in page
    assert 'href="?q=vision&amp;page=2"' in page
    assert "net-29" in client.get("/?q=vision&page=2").content.decode()


def test_a_re_upload_of_the_same_artifact_says_which_version_it_matches(client, owner, registered_model, model_files):
    upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    client.force_login(owner)
    page = client.get("/models/iris/versions/2/").content.decode()
    assert 'id="identical-versions"' in page and 'href="/models/iris/versions/1/"' in page
    assert client.get("/api/v1/models/iris/versions/2/").json()["identical_to"] == [1]
    assert client.get("/api/v1/models/iris/versions/1/").json()["identical_to"] == [2]


def test_model_page_edits_description_tags_and_visibility_inline_and_audits_it(client, owner, registered_model):
    client.force_login(owner)
    page = client.get("/models/iris/").content.decode()
    assert 'id="model-edit"' in page and 'action="/models/iris/edit/"' in page
    form = {"description": "Fisher's irises", "tags": "tabular, team=botany", "visibility": "internal"}
    response = client.post("/models/iris/edit/", form, follow=True)
    page = response.content.decode()
    assert "Saved description, visibility, tags." in page
    registered_model.refresh_from_db()
    assert registered_model.description == "Fisher's irises" and registered_model.visibility == "internal"
    assert sorted(registered_model.tags.values_list("name", flat=True)) == ["tabular", "team=botany"]
    event = AuditEvent.objects.filter(action="model.update").get()
    assert event.after["tags"] == ["tabular", "team=botany"] and event.before["visibility"] == "private"
    assert client.get("/?tag=team=botany").content.decode().count('href="/models/iris/"') >= 1


def test_inline_edit_refuses_bad_tags_and_changes_nothing(client, owner, registered_model):
    client.force_login(owner)
    form = {"description": "changed", "tags": "ok, bad tag!", "visibility": "private"}
    page = client.post("/models/iris/edit/", form, follow=True).content.decode()
    assert "Not saved: Invalid tag" in page
    registered_model.refresh_from_db()
    assert registered_model.description == "test model" and not registered_model.tags.exists()
    assert not AuditEvent.objects.filter(action="model.update").exists()


def test_inline_edit_is_not_offered_to_a_maintainer_and_refused_if_posted(client, owner, member, registered_model):
    services.role_grant(actor=owner, model=registered_model, role="maintainer", username=member.username)
    client.force_login(member)
    assert 'id="model-edit"' not in client.get("/models/iris/").content.decode()
    form = {"description": "taken over", "tags": "", "visibility": "public"}
    page = client.post("/models/iris/edit/", form, follow=True).content.decode()
    assert "Not saved:" in page
    registered_model.refresh_from_db()
    assert registered_model.visibility == "private" and registered_model.description == "test model"
