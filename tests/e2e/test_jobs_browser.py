"""A person in Chromium submits a batch job, watches its progress and downloads the result."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from playwright.sync_api import expect

from registry import services
from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_submit_watch_and_download_a_batch_job(page, owner, registered_model, ready_version, worker, tmp_path):
    ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    rows = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    lines = tmp_path / "inputs.jsonl"
    lines.write_text("\n".join(json.dumps({"features": row.tolist()}) for row in rows))

    login(page, "olivia", "owner-pass-123")
    page.click("nav >> text=Jobs")
    page.goto("/jobs/new/")
    page.select_option("select[name=model]", "iris")
    page.set_input_files("input[name=file]", str(lines))
    page.fill("input[name=chunk_size]", "50")
    page.click("button:has-text('Submit job')")
    page.wait_for_url("**/jobs/*/")
    # The page polls the API and shows the progress bar until the job is done.
    expect(page.locator(".job-progress .status")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#job-rows")).to_contain_text("300 of 300 rows")
    with page.expect_download() as download:
        page.click("#job-download")
    result = [json.loads(line) for line in io.StringIO(download.value.path().read_text())]
    assert len(result) == 300
    assert set(result[0]) >= {"output__0"}
