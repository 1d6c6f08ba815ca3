"""Batch prediction jobs: bad input, the REST API, the pages and the admin."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from inference import jobs, tasks
from inference.models import BatchJob
from registry import services
from tests.conftest import upload_file
from tests.inference.conftest import (
    JOBS,
    forward,
    jsonl_bytes,
    npz_bytes,
    rows,
    run,
    stored_job_files,
    submit,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_model_cache")]


# --- bad input: a clear 4xx and nothing written ---------------------------------------------


def object_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, features=np.array([{"a": 1}, None], dtype=object))
    return buffer.getvalue()


BAD_INPUTS = [
    ("wrong name", "in.npz", npz_bytes(inputs=rows(3)), "has no array named 'features'"),
    ("extra array", "in.npz", npz_bytes(features=rows(3), extra=rows(3)), "unexpected array 'extra'"),
    ("wrong shape", "in.npz", npz_bytes(features=np.ones((3, 5), np.float32)), "has shape [3, 5]"),
    ("no rows axis", "in.npz", npz_bytes(features=np.float32(1.0)), "has shape []"),
    ("wrong dtype", "in.npz", npz_bytes(features=np.full((2, 4), "a")), "holds strings"),
    ("complex", "in.npz", npz_bytes(features=np.ones((2, 4), np.complex64)), "complex numbers"),
    ("empty rows", "in.npz", npz_bytes(features=np.ones((0, 4), np.float32)), "no rows"),
    ("object array", "in.npz", object_npz(), "object array (pickled Python objects)"),
    ("corrupt npz", "in.npz", npz_bytes(features=rows(3))[:100], "not a readable .npz"),
    ("not a zip", "in.npz", b"hello, not numpy", "not a readable .npz"),
    ("npy", "in.npy", b"\x93NUMPY\x01\x00v\x00{'descr'", "This is a .npy file"),
    ("empty file", "in.jsonl", b"", "The uploaded file is empty"),
    ("blank lines", "in.jsonl", b"\n  \n", "no rows"),
    (
        "bad json line",
        "in.jsonl",
        b'{"features": [1, 2, 3, 4]}\n\n{"features": [1, 2, 3, 4]\n',
        "Line 3 is not valid JSON",
    ),
    ("wrong key", "in.jsonl", b'{"x": [1, 2, 3, 4]}\n', "Line 1 must be a JSON object with exactly the keys"),
    ("not an object", "in.jsonl", b"[1, 2, 3, 4]\n", "Line 1 must be a JSON object"),
    ("ragged", "in.jsonl", b'{"features": [[1, 2], [3]]}\n', "Line 1: input 'features' is ragged"),
    (
        "row shape",
        "in.jsonl",
        b'{"features": [1, 2, 3, 4]}\n{"features": [1, 2, 3]}\n',
        "Line 2: input 'features' has shape [3]",
    ),
    ("with batch dim", "in.jsonl", b'{"features": [[1, 2, 3, 4]]}\n', "no batch dimension"),
    ("strings", "in.jsonl", b'{"features": ["a", "b", "c", "d"]}\n', "Line 1: input 'features' holds strings"),
    ("nulls", "in.jsonl", b'{"features": [1, null, 3, 4]}\n', "Python objects"),
]


@pytest.mark.parametrize(
    ("filename", "content", "message"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_refused_naming_the_problem_and_leaves_nothing(owner, version, filename, content, message):
    with pytest.raises(InvalidInput) as caught:
        submit(owner, content, filename=filename)
    assert message in caught.value.message
    assert caught.value.status_code == 400
    assert not BatchJob.objects.exists()
    assert stored_job_files() == []


def test_inputs_need_the_same_number_of_rows_and_fitting_types():
    signature = {
        "inputs": [
            {"name": "ids", "datatype": "INT8", "shape": [-1, 2]},
            {"name": "mask", "datatype": "BOOL", "shape": [-1, 2]},
        ]
    }

    def read(**arrays: Any) -> Any:
        return jobs.input_read(SimpleUploadedFile("x.npz", npz_bytes(**arrays)), "x.npz", signature)

    ids, mask = np.ones((3, 2), np.int64), np.ones((3, 2), bool)
    assert read(ids=ids, mask=mask)[1]["ids"].dtype == np.int8
    with pytest.raises(InvalidInput, match=r"different numbers of rows \{'ids': 3, 'mask': 2\}"):
        read(ids=ids, mask=mask[:2])
    with pytest.raises(InvalidInput, match="outside the range of INT8"):
        read(ids=ids * 1000, mask=mask)
    with pytest.raises(
        InvalidInput, match=r"input 'ids' holds floating-point numbers \(float64\); the model expects INT8"
    ):
        read(ids=ids * 0.5, mask=mask)
    with pytest.raises(InvalidInput, match="input 'mask' holds integers"):
        read(ids=ids, mask=ids)


def test_over_the_size_limit_is_413_and_leaves_nothing(owner, version, settings):
    settings.BATCH_INPUT_MAX_BYTES = 1000
    with pytest.raises(PayloadTooLarge, match="larger than the limit of 1000"):
        submit(owner, npz_bytes(features=rows(100)))
    compressed = io.BytesIO()
    np.savez_compressed(compressed, features=np.zeros((1000, 4), np.float32))
    with pytest.raises(PayloadTooLarge, match="expands to"):
        submit(owner, compressed.getvalue())
    assert not BatchJob.objects.exists() and stored_job_files() == []


def test_unknown_or_invisible_model_is_404_and_non_ready_version_409(
    owner, outsider, registered_model, version, model_files
):
    data = npz_bytes(features=rows(2))
    with pytest.raises(NotFound, match="'nope' not found"):
        jobs.job_submit(actor=owner, model_name="nope", file=SimpleUploadedFile("x.npz", data))
    with pytest.raises(NotFound, match="'iris' not found"):
        submit(outsider, data)
    with pytest.raises(NotFound, match="Version 7 of model 'iris' not found"):
        submit(owner, data, version=7)
    with pytest.raises(NotFound, match="no alias 'production'"):
        submit(owner, data, version=None)
    upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    with pytest.raises(Conflict, match="Version 2 of 'iris' is pending; only ready versions run jobs"):
        submit(owner, data, version=2)
    with pytest.raises(InvalidInput, match="not both"):
        submit(owner, data, version=1, alias="production")
    with pytest.raises(InvalidInput, match="chunk_size"):
        submit(owner, data, chunk_size=0)
    assert not BatchJob.objects.exists() and stored_job_files() == []


def test_delete_removes_the_row_and_every_file_but_not_while_running(
    owner, version, django_capture_on_commit_callbacks
):
    job = run(submit(owner, npz_bytes(features=rows(3))))
    assert len(stored_job_files()) == 2
    running = submit(owner, npz_bytes(features=rows(3)))
    BatchJob.objects.filter(pk=running.pk).update(status="running")
    with pytest.raises(Conflict, match="is running; cancel it"):
        jobs.job_delete(actor=owner, job=running)
    BatchJob.objects.filter(pk=running.pk).update(status="failed")
    with django_capture_on_commit_callbacks(execute=True):
        jobs.job_delete(actor=owner, job=job)
        jobs.job_delete(actor=owner, job=running)
    assert not BatchJob.objects.exists()
    assert stored_job_files() == []


# --- REST API ---------------------------------------------------------------------------------


def assert_error(response: Any, status: int, fragment: str) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) >= {"error", "code"}
    assert fragment in body["error"], body


def post_job(client: Any, content: bytes, filename: str = "inputs.npz", **fields: Any) -> Any:
    fields.setdefault("model", "iris")
    fields.setdefault("version", 1)
    return client.post(JOBS, {**fields, "file": SimpleUploadedFile(filename, content)}, format="multipart")


def download(client: Any, url: str) -> tuple[Any, bytes]:
    response = client.get(url)
    assert response.status_code == 200, response.content
    return response, b"".join(response.streaming_content)


def test_api_submit_poll_download_and_delete(api, owner, version, net):
    client = api(owner)
    x = rows(6)
    response = post_job(client, npz_bytes(features=x), chunk_size=4)
    assert response.status_code == 201, response.content
    body = response.json()
    job_id = body["id"]
    assert body | {"id": None, "created_at": None} == {
        "id": None,
        "model": "iris",
        "version": 1,
        "status": "queued",
        "progress": 0.0,
        "rows_done": 0,
        "total_rows": 6,
        "chunk_size": 4,
        "input_format": "npz",
        "result_format": "npz",
        "input_filename": "inputs.npz",
        "cancel_requested": False,
        "attempts": 0,
        "error": "",
        "created_by": "olivia",
        "created_at": None,
        "started_at": None,
        "finished_at": None,
        "url": f"/jobs/{job_id}/",
        "result_url": None,
    }
    assert_error(client.get(f"{JOBS}{job_id}/result/"), 409, "once it has succeeded")
    tasks.batch_job_run(job_id)
    body = client.get(f"{JOBS}{job_id}/").json()
    assert (body["status"], body["progress"], body["rows_done"]) == ("succeeded", 100.0, 6)
    response, content = download(client, body["result_url"])
    assert response["Content-Disposition"] == f'attachment; filename="iris-v1-{job_id[:8]}-result.npz"'
    with np.load(io.BytesIO(content), allow_pickle=False) as npz:
        np.testing.assert_allclose(npz["output__0"], forward(net, x), atol=1e-5)
    assert client.delete(f"{JOBS}{job_id}/").status_code == 204
    assert_error(client.get(f"{JOBS}{job_id}/"), 404, "not found")


def test_api_jsonl_result_download(api, owner, version, net):
    client = api(owner)
    x = rows(3)
    job_id = post_job(client, jsonl_bytes(x), filename="x.jsonl").json()["id"]
    tasks.batch_job_run(job_id)
    response, content = download(client, f"{JOBS}{job_id}/result/")
    assert response["Content-Type"] == "application/jsonl"
    lines = [json.loads(line) for line in content.splitlines()]
    np.testing.assert_allclose([line["output__0"] for line in lines], forward(net, x), atol=1e-5)


def test_api_errors_name_the_problem(api, owner, registered_model, version, model_files, settings):
    client = api(owner)
    assert_error(post_job(client, npz_bytes(wrong=rows(2))), 400, "no array named 'features'")
    assert_error(post_job(client, b'{"features": [1, 2, 3, 4]}\n{"features": [1, 2\n', "x.jsonl"), 400, "Line 2")
    assert_error(post_job(client, npz_bytes(features=rows(2)), model="nope"), 404, "'nope' not found")
    assert_error(post_job(client, npz_bytes(features=rows(2)), result_format="csv"), 400, "result_format")
    upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    assert_error(post_job(client, npz_bytes(features=rows(2)), version=2), 409, "is pending")
    settings.BATCH_INPUT_MAX_BYTES = 1000
    assert_error(post_job(client, npz_bytes(features=rows(100))), 413, "larger than")
    big = SimpleUploadedFile("x.npz", b"0" * 3 * 1024 * 1024)
    response = client.post(JOBS, {"model": "iris", "file": big}, format="multipart")
    assert_error(response, 413, "BATCH_INPUT_MAX_BYTES")
    assert not BatchJob.objects.exists() and stored_job_files() == []


def test_api_lists_own_jobs_staff_see_all_others_get_404(api, owner, member, admin_user, registered_model, version):
    services.model_update(actor=owner, model=registered_model, visibility="public")
    mine = post_job(api(owner), npz_bytes(features=rows(2))).json()["id"]
    theirs = post_job(api(member), npz_bytes(features=rows(2))).json()["id"]
    tasks.batch_job_run(theirs)

    def ids(user: Any, query: str = "") -> list[str]:
        response = api(user).get(JOBS + query)
        assert response.status_code == 200, response.content
        return [job["id"] for job in response.json()["results"]]

    assert ids(owner) == [mine]
    assert ids(member) == [theirs]
    assert sorted(ids(admin_user)) == sorted([mine, theirs])
    assert ids(admin_user, "?status=succeeded") == [theirs]
    assert ids(admin_user, "?model=iris&status=queued") == [mine]
    assert ids(admin_user, "?model=other") == []
    intruder = api(member)
    for method, url in [
        ("get", f"{JOBS}{mine}/"),
        ("post", f"{JOBS}{mine}/cancel/"),
        ("get", f"{JOBS}{mine}/result/"),
        ("delete", f"{JOBS}{mine}/"),
    ]:
        assert_error(getattr(intruder, method)(url), 404, "not found")
    assert api(admin_user).get(f"{JOBS}{mine}/").status_code == 200
    assert_error(api(owner).get(f"{JOBS}not-a-job-id/"), 404, "not found")
    assert BatchJob.objects.count() == 2
    for method, url in [("get", JOBS), ("post", JOBS), ("get", f"{JOBS}{mine}/")]:
        assert getattr(api(), method)(url).status_code in (401, 403)


def test_api_cancel(api, owner, version):
    client = api(owner)
    job_id = post_job(client, npz_bytes(features=rows(2))).json()["id"]
    response = client.post(f"{JOBS}{job_id}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert_error(client.post(f"{JOBS}{job_id}/cancel/"), 409, "already cancelled")
    assert_error(client.get(f"{JOBS}{job_id}/result/"), 409, "is cancelled")


# --- browser pages and admin ----------------------------------------------------------------------


def test_job_pages_require_login(client):
    for url in ["/jobs/", "/jobs/new/", "/jobs/00000000-0000-0000-0000-000000000000/"]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), url


def test_submit_page_follow_progress_and_download(client, owner, version):
    client.force_login(owner)
    page = client.get("/jobs/new/?model=iris").content.decode()
    assert '<option value="iris" selected>iris</option>' in page
    response = client.post(
        "/jobs/new/",
        {"model": "iris", "version": "1", "file": SimpleUploadedFile("x.jsonl", jsonl_bytes(rows(3))), "chunk_size": 2},
    )
    job = BatchJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert f'data-job-api="/api/v1/jobs/{job.pk}/"' in page and 'data-status="queued"' in page
    assert "<progress" in page and 'id="job-cancel"' in page and "inference/jobs.js" in page
    assert 'id="job-download"' not in page
    run(job)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'href="/api/v1/jobs/{job.pk}/result/"' in page and 'id="job-cancel"' not in page
    listing = client.get("/jobs/").content.decode()
    assert job.short_id in listing and 'value="100.0"' in listing and ">Jobs</a>" in listing


def test_submit_page_shows_what_is_wrong(client, owner, version, settings):
    client.force_login(owner)
    response = client.post("/jobs/new/", {"model": "iris", "file": SimpleUploadedFile("x.npz", npz_bytes(x=rows(2)))})
    assert response.status_code == 404  # no production alias: NotFound, shown on the form
    assert "no alias &#x27;production&#x27;" in response.content.decode()
    response = client.post(
        "/jobs/new/", {"model": "iris", "version": "1", "file": SimpleUploadedFile("x.npz", npz_bytes(x=rows(2)))}
    )
    assert response.status_code == 400 and "no array named &#x27;features&#x27;" in response.content.decode()
    settings.BATCH_INPUT_MAX_BYTES = 1000
    response = client.post(
        "/jobs/new/", {"model": "iris", "version": "1", "file": SimpleUploadedFile("x.npz", npz_bytes(x=rows(100)))}
    )
    assert response.status_code == 413 and "larger than the limit" in response.content.decode()
    assert not BatchJob.objects.exists()


def test_cancel_and_delete_buttons_and_other_users(client, owner, member, version, django_capture_on_commit_callbacks):
    job = submit(owner, npz_bytes(features=rows(2)))
    client.force_login(member)
    assert client.get(f"/jobs/{job.pk}/").status_code == 404
    assert client.post(f"/jobs/{job.pk}/cancel/").status_code == 404
    client.force_login(owner)
    response = client.post(f"/jobs/{job.pk}/cancel/", follow=True)
    assert "cancelled" in response.content.decode()
    assert BatchJob.objects.get().status == "cancelled"
    response = client.post(f"/jobs/{job.pk}/cancel/", follow=True)
    assert "already cancelled" in response.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/jobs/{job.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/jobs/"
    assert not BatchJob.objects.exists() and stored_job_files() == []


def test_job_list_query_count_does_not_grow_with_jobs(client, owner, version, django_assert_max_num_queries):
    for _ in range(12):
        submit(owner, npz_bytes(features=rows(2)))
    client.force_login(owner)
    with django_assert_max_num_queries(8):
        assert client.get("/jobs/").status_code == 200


def test_admin_lists_filters_and_deletes_jobs_with_their_files(
    client, admin_user, owner, version, django_capture_on_commit_callbacks
):
    job = run(submit(owner, npz_bytes(features=rows(2))))
    client.force_login(admin_user)
    for url in [
        "/admin/inference/batchjob/",
        "/admin/inference/batchjob/?status__exact=succeeded",
        "/admin/inference/batchjob/?q=iris",
        f"/admin/inference/batchjob/{job.pk}/change/",
    ]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert job.short_id in response.content.decode() or "change" in url
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/admin/inference/batchjob/{job.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not BatchJob.objects.exists() and stored_job_files() == []
