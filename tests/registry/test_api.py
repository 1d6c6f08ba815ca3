"""The registry REST API: every endpoint, its errors, and who may call it."""

from __future__ import annotations

import hashlib

import pytest

from registry import services
from registry.models import AuditEvent, ModelVersion, Visibility
from tests.conftest import SIGNATURE, multipart

pytestmark = pytest.mark.django_db

MODELS = "/api/v1/models/"


def assert_error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) >= {"error", "code"}
    assert fragment in body["error"], body


def test_anonymous_can_read_or_write_nothing(api, registered_model):
    client = api()
    for method, url in [
        ("get", MODELS),
        ("post", MODELS),
        ("get", f"{MODELS}iris/"),
        ("get", f"{MODELS}iris/versions/"),
        ("get", "/api/v1/audit-events/"),
        ("get", "/api/v1/schema/"),
        ("get", "/api/v1/tokens/"),
    ]:
        response = getattr(client, method)(url)
        assert response.status_code in (401, 403), (method, url, response.status_code)
        assert b"error" in response.content


def test_create_get_update_delete_model(api, owner):
    client = api(owner)
    response = client.post(MODELS, {"name": "churn", "description": "d", "tags": ["tabular", "demo"]}, format="json")
    assert response.status_code == 201, response.content
    assert response.json() | {"created_at": None, "updated_at": None} == {
        "name": "churn",
        "description": "d",
        "owner": "olivia",
        "visibility": "private",
        "tags": ["demo", "tabular"],
        "aliases": {},
        "latest_version": None,
        "created_at": None,
        "updated_at": None,
        "url": "/models/churn/",
    }
    response = client.patch(f"{MODELS}churn/", {"description": "new", "visibility": "internal"}, format="json")
    assert response.status_code == 200 and response.json()["description"] == "new"
    assert AuditEvent.objects.filter(action="model.update", model_name="churn").exists()
    assert client.delete(f"{MODELS}churn/").status_code == 204
    assert_error(client.get(f"{MODELS}churn/"), 404, "'churn' not found")


def test_duplicate_and_invalid_model_names(api, owner, registered_model):
    client = api(owner)
    assert_error(client.post(MODELS, {"name": "iris"}, format="json"), 409, "already exists")
    assert_error(client.post(MODELS, {"name": "bad name!"}, format="json"), 400, "Invalid model name")
    assert_error(client.post(MODELS, {}, format="json"), 400, "name")


def test_list_search_filter_and_paginate(api, owner, ready_version, registered_model):
    services.model_create(actor=owner, name="resnet", description="images", tags=["vision"])
    services.model_create(actor=owner, name="bert", description="text encoder", tags=["nlp"])
    version = ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=version.version)
    client = api(owner)

    def names(query: str) -> list[str]:
        response = client.get(MODELS + query)
        assert response.status_code == 200
        return [m["name"] for m in response.json()["results"]]

    assert names("") == ["bert", "iris", "resnet"]
    assert names("?search=image") == ["resnet"]
    assert names("?tag=nlp") == ["bert"]
    assert names("?alias=production") == ["iris"]
    page = client.get(MODELS + "?page_size=2").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    assert client.get(f"{MODELS}iris/").json()["aliases"] == {"production": 1}


def test_private_models_are_invisible_to_others_and_internal_ones_read_only(
    api, owner, member, registered_model, ready_version
):
    ready_version()
    outsider_client = api(member)
    for url in [
        f"{MODELS}iris/",
        f"{MODELS}iris/versions/",
        f"{MODELS}iris/versions/1/",
        f"{MODELS}iris/aliases/",
        f"{MODELS}iris/versions/1/download/",
    ]:
        assert_error(outsider_client.get(url), 404, "not found")
    assert outsider_client.get(MODELS).json()["results"] == []
    assert outsider_client.get("/api/v1/audit-events/").json()["results"] == []

    services.model_update(actor=owner, model=registered_model, visibility=Visibility.INTERNAL)
    assert outsider_client.get(f"{MODELS}iris/").status_code == 200
    assert_error(
        outsider_client.put(f"{MODELS}iris/aliases/production/", {"version": 1}, format="json"), 403, "not change it"
    )
    assert_error(outsider_client.delete(f"{MODELS}iris/"), 403, "not change it")
    with open(__file__, "rb") as stream:
        response = outsider_client.post(f"{MODELS}iris/versions/", {"file": stream}, format="multipart")
    assert_error(response, 403, "not change it")


@pytest.mark.celery_eager
def test_upload_over_api_validates_and_reports(
    api, owner, registered_model, model_files, django_capture_on_commit_callbacks
):
    client = api(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"{MODELS}iris/versions/",
            multipart(
                model_files["torchscript"], signature=SIGNATURE, labels=["a", "b", "c"], description="v1", tags="x,y"
            ),
            format="multipart",
        )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["version"] == 1 and body["status"] == "pending" and body["format"] == "torchscript"
    assert body["sha256"] == hashlib.sha256(model_files["torchscript"].read_bytes()).hexdigest()
    assert body["tags"] == ["x", "y"]
    detail = client.get(f"{MODELS}iris/versions/1/").json()  # eager validation ran on commit
    assert detail["status"] == "ready", detail["status_reason"]
    assert detail["signature"]["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}]
    assert detail["labels"] == ["a", "b", "c"]
    assert detail["validation"]["parameter_count"] > 0


def test_upload_with_example_input_infers_signature(api, owner, registered_model, model_files):
    example = {"inputs": [{"name": "x", "data": [[1.0, 2.0, 3.0, 4.0]]}]}
    response = api(owner).post(
        f"{MODELS}iris/versions/", multipart(model_files["exported_program"], example_input=example), format="multipart"
    )
    assert response.status_code == 201, response.content
    assert response.json()["signature"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]


@pytest.mark.parametrize(
    ("key", "fields", "status", "fragment"),
    [
        ("text", {}, 400, "not a PyTorch model archive"),
        ("truncated", {}, 400, "corrupt or truncated"),
        ("state_dict", {}, 400, "torch.save checkpoint"),
        ("torchscript", {"format": "exported_program"}, 400, "declared as exported_program"),
        ("torchscript", {"signature": "{not json"}, 400, "signature"),
        ("torchscript", {"signature": None}, 400, "Give a signature"),
        ("torchscript", {"format": "onnx"}, 400, "format"),
    ],
)
def test_bad_uploads_get_4xx_and_leave_nothing(
    api, owner, registered_model, model_files, key, fields, status, fragment
):
    fields = {"signature": SIGNATURE, **fields}
    data = multipart(model_files[key], **{k: v for k, v in fields.items() if v is not None})
    assert_error(api(owner).post(f"{MODELS}iris/versions/", data, format="multipart"), status, fragment)
    assert not ModelVersion.objects.exists()


def test_empty_upload_and_missing_file(api, owner, registered_model, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    client = api(owner)
    assert_error(
        client.post(f"{MODELS}iris/versions/", multipart(empty, signature=SIGNATURE), format="multipart"), 400, "empty"
    )
    assert_error(client.post(f"{MODELS}iris/versions/", {"signature": "{}"}, format="multipart"), 400, "file")


def test_upload_over_the_limit_is_413(api, owner, registered_model, model_files, settings):
    settings.MODEL_UPLOAD_MAX_BYTES = 1000
    response = api(owner).post(
        f"{MODELS}iris/versions/", multipart(model_files["torchscript"], signature=SIGNATURE), format="multipart"
    )
    assert_error(response, 413, "larger than the limit")
    assert not ModelVersion.objects.exists()


def test_unknown_model_version_alias_are_404(api, owner, registered_model, ready_version):
    ready_version()
    client = api(owner)
    assert_error(client.get(f"{MODELS}nope/versions/"), 404, "'nope' not found")
    assert_error(client.get(f"{MODELS}iris/versions/7/"), 404, "Version 7")
    assert_error(client.get(f"{MODELS}iris/aliases/staging/"), 404, "no alias 'staging'")
    assert_error(client.put(f"{MODELS}iris/aliases/staging/", {"version": 9}, format="json"), 404, "no version 9")
    assert_error(client.post(f"{MODELS}iris/aliases/staging/rollback/"), 404, "no alias")


def test_alias_set_rollback_history_delete(api, owner, registered_model, ready_version):
    ready_version(), ready_version()
    client = api(owner)
    assert client.put(f"{MODELS}iris/aliases/production/", {"version": 1}, format="json").status_code == 200
    response = client.put(f"{MODELS}iris/aliases/production/", {"version": 2}, format="json")
    assert response.json() | {"updated_at": None} == {
        "name": "production",
        "version": 2,
        "updated_by": "olivia",
        "updated_at": None,
    }
    response = client.post(f"{MODELS}iris/aliases/production/rollback/")
    assert response.status_code == 200 and response.json()["version"] == 1
    history = client.get(f"{MODELS}iris/aliases/production/history/").json()
    assert [(e["action"], e["before"], e["after"]) for e in history] == [
        ("alias.rollback", {"version": 2}, {"version": 1}),
        ("alias.move", {"version": 1}, {"version": 2}),
        ("alias.move", {"version": None}, {"version": 1}),
    ]
    assert [a["name"] for a in client.get(f"{MODELS}iris/aliases/").json()] == ["production"]
    assert client.delete(f"{MODELS}iris/aliases/production/").status_code == 204
    assert client.get(f"{MODELS}iris/aliases/").json() == []


def test_alias_on_non_ready_version_and_bad_alias_name(api, owner, registered_model, model_files):
    client = api(owner)
    client.post(
        f"{MODELS}iris/versions/", multipart(model_files["torchscript"], signature=SIGNATURE), format="multipart"
    )
    assert_error(
        client.put(f"{MODELS}iris/aliases/production/", {"version": 1}, format="json"), 409, "only ready versions"
    )
    assert_error(client.put(f"{MODELS}iris/aliases/Prod/", {"version": 1}, format="json"), 400, "Invalid alias name")


def test_version_update_archive_restore_delete_download(api, owner, registered_model, ready_version, model_files):
    ready_version()
    client = api(owner)
    response = client.patch(f"{MODELS}iris/versions/1/", {"description": "better", "tags": ["gold"]}, format="json")
    assert response.json()["description"] == "better" and response.json()["tags"] == ["gold"]
    download = client.get(f"{MODELS}iris/versions/1/download/")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == model_files["torchscript"].read_bytes()
    assert download["X-Checksum-SHA256"] == hashlib.sha256(model_files["torchscript"].read_bytes()).hexdigest()
    assert 'filename="iris-v1.pt"' in download["Content-Disposition"]
    assert client.post(f"{MODELS}iris/versions/1/archive/").json()["status"] == "archived"
    assert_error(client.post(f"{MODELS}iris/versions/1/validate/"), 409, "only failed or pending")
    assert client.post(f"{MODELS}iris/versions/1/restore/").json()["status"] == "pending"
    assert client.delete(f"{MODELS}iris/versions/1/").status_code == 204
    assert_error(client.get(f"{MODELS}iris/versions/1/"), 404, "Version 1")


def test_audit_events_filter(api, owner, registered_model, ready_version):
    ready_version()
    services.alias_set(actor=owner, model=registered_model, name="staging", version_number=1)
    events = api(owner).get("/api/v1/audit-events/?model=iris&action=alias.move").json()["results"]
    assert [(e["actor"], e["object"], e["after"]) for e in events] == [("olivia", "staging", {"version": 1})]


def test_list_endpoints_use_a_bounded_number_of_queries(
    api, owner, registered_model, ready_version, django_assert_max_num_queries
):
    for i in range(12):
        services.model_create(actor=owner, name=f"m{i}", tags=["a", "b"])
    for _ in range(4):
        ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    client = api(owner)
    with django_assert_max_num_queries(6):
        assert len(client.get(MODELS).json()["results"]) == 13
    with django_assert_max_num_queries(8):
        assert len(client.get(f"{MODELS}iris/versions/").json()["results"]) == 4


def test_batching_settings_are_changed_per_version_and_checked(api, owner, registered_model, ready_version):
    ready_version()
    client = api(owner)
    response = client.patch(f"{MODELS}iris/versions/1/", {"max_batch_size": 8, "max_batch_delay_ms": 2}, format="json")
    assert response.status_code == 200
    assert (response.json()["max_batch_size"], response.json()["max_batch_delay_ms"]) == (8, 2)
    assert_error(client.patch(f"{MODELS}iris/versions/1/", {"max_batch_size": 0}, format="json"), 400, "max_batch_size")
    assert_error(client.patch(f"{MODELS}iris/versions/1/", {"max_batch_delay_ms": 5000}, format="json"), 400, "delay")
    event = AuditEvent.objects.filter(action="version.update").latest("id")
    assert (event.before["max_batch_size"], event.after["max_batch_size"]) == (32, 8)
