"""Lineage and source metadata of versions: given at upload through the API, the command and the
form, checked (strings only, bounded, http(s) links only), shown on the version page and in the API."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from core.errors import InvalidInput
from registry.models import AuditEvent, ModelVersion
from registry.sources import MAX_SOURCE_BYTES, source_parse, source_rows
from tests.conftest import SIGNATURE, multipart, upload_file

pytestmark = pytest.mark.django_db

SOURCE = {
    "run_url": "https://mlflow.example.com/#/experiments/3/runs/9f1c",
    "git_commit": "3f2a9c1e",
    "dataset": "iris-v2",
    "run_id": "9f1c",
    "framework": "pytorch 2.13",
}


def test_the_api_takes_source_and_parent_and_gives_them_back(api, owner, registered_model, model_files):
    upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    fields = {"signature": SIGNATURE, "source": SOURCE, "parent": 1, "derivation": "fine-tuned 3 more epochs"}
    response = api(owner).post(
        "/api/v1/models/iris/versions/", multipart(model_files["torchscript"], **fields), format="multipart"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["source"] == SOURCE and body["parent"] == 1 and body["derivation"] == "fine-tuned 3 more epochs"
    assert api(owner).get("/api/v1/models/iris/versions/2/").json()["source"] == SOURCE
    assert api(owner).get("/api/v1/models/iris/versions/1/").json()["source"] == {}
    upload = AuditEvent.objects.filter(action="version.upload").latest("id")
    assert upload.after["source"] == SOURCE and upload.after["parent"] == 1


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"run_url": "javascript:alert(1)"}, "source.run_url must be an http:// or https:// URL"),
        ({"notebook_url": "file:///etc/passwd"}, "source.notebook_url must be an http:// or https:// URL"),
        ({"run_url": "https://"}, "must be an http:// or https:// URL"),
        ({"run_id": 42}, "source.run_id must be a string, not int"),
        ({"dataset": {"name": "x"}}, "source.dataset must be a string, not dict"),
        ({"bad key!": "x"}, "Invalid source key 'bad key!'"),
        ({"notes": "x" * 1001}, "source.notes is 1001 characters; at most 1000"),
        ({f"k{i}": "v" * 900 for i in range(10)}, f"at most {MAX_SOURCE_BYTES}"),
        ({f"k{i}": "v" for i in range(33)}, "source has 33 keys; at most 32"),
        (["run_url", "https://x"], "source must be a JSON object of strings"),
    ],
)
def test_bad_source_is_refused_with_a_clear_400_and_nothing_is_written(
    api, owner, registered_model, model_files, source, message
):
    fields = {"signature": SIGNATURE, "source": source}
    response = api(owner).post(
        "/api/v1/models/iris/versions/", multipart(model_files["torchscript"], **fields), format="multipart"
    )
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not ModelVersion.objects.exists()


def test_source_that_is_not_json_is_a_400(api, owner, registered_model, model_files):
    data = multipart(model_files["torchscript"], signature=SIGNATURE)
    data["source"] = "{run_url: nope"
    response = api(owner).post("/api/v1/models/iris/versions/", data, format="multipart")
    assert response.status_code == 400 and "source" in json.dumps(response.json())
    assert not ModelVersion.objects.exists()


def test_derivation_needs_a_parent(api, owner, registered_model, model_files):
    fields = {"signature": SIGNATURE, "derivation": "quantized"}
    response = api(owner).post(
        "/api/v1/models/iris/versions/", multipart(model_files["torchscript"], **fields), format="multipart"
    )
    assert response.status_code == 400 and "give parent too" in response.json()["error"]


def test_empty_values_are_dropped_and_values_trimmed():
    assert source_parse({"dataset": "  iris ", "run_id": "  "}) == {"dataset": "iris"}
    assert source_parse(None) == {} and source_parse("") == {}


def test_only_http_urls_become_links_even_for_rows_written_some_other_way():
    rows = source_rows(
        {"notes": "javascript:alert(1)", "run_url": "javascript:alert(1)", "dataset": "https://d.example/x"}
    )
    assert [row["key"] for row in rows] == ["run_url", "dataset", "notes"]  # named keys first
    assert [row["href"] for row in rows] == ["", "https://d.example/x", ""]


def test_the_command_takes_source_pairs_json_and_a_parent(owner, registered_model, model_files, tmp_path):
    upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    extra = tmp_path / "source.json"
    extra.write_text(json.dumps({"dataset": "from-json", "run_id": "7"}))
    call_command(
        "upload_model", "iris", str(model_files["torchscript"]), "--user", "olivia",
        "--signature", json.dumps(SIGNATURE), "--source-json", f"@{extra}",
        "--source", "run_url=https://ci.example.com/runs/7", "--source", "dataset=iris-v3",
        "--parent", "1", "--derivation", "retrained",
    )  # fmt: skip
    version = ModelVersion.objects.get(version=2)
    assert version.source == {"dataset": "iris-v3", "run_id": "7", "run_url": "https://ci.example.com/runs/7"}
    assert version.parent is not None and version.parent.version == 1 and version.derivation == "retrained"


def test_the_command_refuses_a_javascript_url_and_a_line_without_equals(owner, registered_model, model_files):
    args = ["upload_model", "iris", str(model_files["torchscript"]), "--user", "olivia", "--signature",
            json.dumps(SIGNATURE)]  # fmt: skip
    with pytest.raises(CommandError, match=r"source\.run_url must be an http"):
        call_command(*args, "--source", "run_url=javascript:alert(1)")
    with pytest.raises(CommandError, match="is not key=value"):
        call_command(*args, "--source", "just-a-word")
    assert not ModelVersion.objects.exists()


def test_the_form_without_javascript_records_source(client, owner, registered_model, model_files):
    client.force_login(owner)
    with model_files["torchscript"].open("rb") as stream:
        response = client.post("/models/iris/upload/", {
            "file": stream, "signature": json.dumps(SIGNATURE),
            "source_run_url": "https://mlflow.example.com/runs/1", "source_git_commit": "abc1234",
            "source_more": "framework=pytorch\nnotebook_url=https://nb.example.com/n/1",
        })  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    assert ModelVersion.objects.get().source == {
        "framework": "pytorch", "notebook_url": "https://nb.example.com/n/1",
        "run_url": "https://mlflow.example.com/runs/1", "git_commit": "abc1234",
    }  # fmt: skip


def test_the_form_refuses_a_javascript_url_and_shows_why(client, owner, registered_model, model_files):
    client.force_login(owner)
    with model_files["torchscript"].open("rb") as stream:
        response = client.post("/models/iris/upload/", {
            "file": stream, "signature": json.dumps(SIGNATURE), "source_more": "docs_url=javascript:alert(1)",
        })  # fmt: skip
    assert response.status_code == 400
    assert "source.docs_url must be an http:// or https:// URL" in response.content.decode()
    assert not ModelVersion.objects.exists()


def test_the_version_page_shows_lineage_and_links_only_http_sources(client, owner, registered_model, model_files):
    upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    upload_file(owner, registered_model, model_files["torchscript"], enqueue=False, parent_version=1,
                derivation="pruned 30%", source=SOURCE)  # fmt: skip
    # A value written around the service (admin, shell) is still never a javascript: link.
    ModelVersion.objects.filter(version=2).update(source={**SOURCE, "notes": "javascript:alert(1)"})
    client.force_login(owner)
    page = client.get("/models/iris/versions/2/").content.decode()
    assert 'href="/models/iris/versions/1/">v1</a> · pruned 30%' in page
    assert 'href="/models/iris/versions/diff/?v=1&amp;v=2"' in page
    assert f'<a href="{SOURCE["run_url"]}" rel="noopener noreferrer nofollow">' in page
    assert "<code>3f2a9c1e</code>" in page
    assert 'href="javascript:' not in page and "javascript:alert(1)" in page
    parent_page = client.get("/models/iris/versions/1/").content.decode()
    assert 'id="lineage-derived"' in parent_page and "(pruned 30%)" in parent_page
    assert 'id="source-none"' in parent_page


def test_the_source_is_not_changed_by_a_patch(api, owner, registered_model, model_files):
    upload_file(owner, registered_model, model_files["torchscript"], enqueue=False, source={"dataset": "a"})
    response = api(owner).patch("/api/v1/models/iris/versions/1/", {"source": {"dataset": "b"}}, format="json")
    assert response.status_code == 200 and response.json()["source"] == {"dataset": "a"}


def test_source_parse_refuses_non_objects():
    with pytest.raises(InvalidInput, match="JSON object"):
        source_parse(["a"])
