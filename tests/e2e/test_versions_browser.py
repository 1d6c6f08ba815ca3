"""Versions in the browser: the inline edit of description and tags, source metadata given in the
upload form and shown as a working link, and the comparison's "Differences only" switch.

Each test fails if a page logs a Content-Security-Policy refusal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from registry.models import AuditEvent, ModelVersion
from tests.conftest import SIGNATURE, upload_file
from tests.e2e.conftest import login
from tests.e2e.test_phone_browser import PHONE, overflow

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SHOTS = Path(__file__).resolve().parents[2] / "test-results" / "versions"


def _csp_refusals(page: Any) -> list[str]:
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    return refused


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_a_versions_description_and_tags_are_edited_inline(page, owner, registered_model, model_files):
    upload_file(owner, registered_model, model_files["torchscript"], enqueue=False)
    refused = _csp_refusals(page)
    login(page, "olivia", "owner-pass-123")
    page.goto("/models/iris/versions/1/")
    expect(page.locator("#version-edit form")).to_be_hidden()
    page.click("#version-edit summary")
    page.fill("#version-edit-description", "Retrained on the 2026 export.")
    page.fill("#version-edit-tags", "baseline, team=vision")
    _shot(page, "1-version-edit-open")
    page.click("#version-edit button[type=submit]")
    expect(page.locator(".msg.success")).to_have_text("Saved description, tags.")
    expect(page.locator("#version-description")).to_have_text("Retrained on the 2026 export.")
    expect(page.locator("#version-tags")).to_contain_text("team=vision")
    _shot(page, "2-version-edited")
    assert AuditEvent.objects.filter(action="version.update", object_repr="v1").count() == 1
    assert refused == [], refused


def test_source_given_in_the_upload_form_is_shown_with_a_working_link(page, owner, registered_model, model_files):
    refused = _csp_refusals(page)
    login(page, "olivia", "owner-pass-123")
    page.goto("/models/iris/upload/")
    page.set_input_files("input[name=file]", str(model_files["torchscript"]))
    page.fill("textarea[name=signature]", json.dumps(SIGNATURE))
    page.fill("input[name=source_git_commit]", "3f2a9c1e")
    page.fill("input[name=source_dataset]", "iris-v2")
    page.fill("textarea[name=source_more]", "not a pair")
    page.click("#upload-submit")
    expect(page.locator("#upload-error")).to_contain_text("Source line 1 is not key=value")
    # The API refuses a javascript: link; the page says why and stays.
    page.fill("textarea[name=source_more]", "framework=pytorch 2.13")
    page.fill("input[name=source_run_url]", "javascript:alert(1)")
    page.click("#upload-submit")
    expect(page.locator("#upload-error")).to_contain_text("source.run_url must be an http:// or https:// URL")
    assert not ModelVersion.objects.exists()

    # A link to a page of this portal, so that following it proves the link works.
    run_url = page.url.split("/models/")[0] + "/models/iris/"
    page.fill("input[name=source_run_url]", run_url)
    _shot(page, "3-upload-with-source")
    page.click("#upload-submit")
    page.wait_for_url(re.compile(r"/models/iris/versions/1/$"))
    lineage = page.locator("#lineage")
    expect(lineage.locator("[data-source-key=git_commit]")).to_have_text("3f2a9c1e")
    expect(lineage.locator("[data-source-key=dataset]")).to_have_text("iris-v2")
    expect(lineage.locator("[data-source-key=framework]")).to_have_text("pytorch 2.13")
    _shot(page, "4-version-lineage")
    link = lineage.locator("[data-source-key=run_url] a")
    expect(link).to_have_attribute("href", run_url)
    link.click()
    page.wait_for_url(run_url)
    expect(page.locator("h1")).to_contain_text("iris")
    assert ModelVersion.objects.get().source == {
        "framework": "pytorch 2.13", "run_url": run_url, "git_commit": "3f2a9c1e", "dataset": "iris-v2",
    }  # fmt: skip
    assert refused == [], refused


def test_two_versions_are_compared_and_differences_only_toggles_in_place(page, owner, registered_model, model_files):
    upload_file(owner, registered_model, model_files["torchscript"], enqueue=False, source={"dataset": "a"})
    upload_file(owner, registered_model, model_files["exported_program"], enqueue=False, parent_version=1,
                source={"dataset": "b"})  # fmt: skip
    refused = _csp_refusals(page)
    login(page, "olivia", "owner-pass-123")
    page.goto("/models/iris/")
    page.check("#version-table tr[data-version='1'] input[name=v]")
    page.check("#version-table tr[data-version='2'] input[name=v]")
    page.click("#version-diff-submit")
    page.wait_for_url(re.compile(r"/models/iris/versions/diff/\?v=2&v=1$"))  # the table lists newest first
    table = page.locator("#version-diff")
    same = table.locator("tr", has=page.locator("th", has_text=re.compile(r"^max_batch_size$")))
    differs = table.locator("tr", has=page.locator("th", has_text=re.compile(r"^Format$")))
    expect(same).to_be_visible()
    expect(differs).to_be_visible()
    expect(table.locator("tr[data-differs=true]", has=page.locator("th", has_text="Dataset"))).to_be_visible()
    _shot(page, "5-diff-all-rows")

    # A mark on this document: a navigation (a form submit) would lose it.
    page.evaluate("window.sameDocument = true")
    page.check("#diff-only")
    expect(same).to_be_hidden()
    expect(differs).to_be_visible()
    assert page.url.endswith("&only=differences")
    assert page.evaluate("window.sameDocument === true")
    _shot(page, "6-diff-differences-only")
    visible = table.locator("tr[data-differs]:visible")
    assert visible.count() == table.locator("tr[data-differs=true]").count()

    page.uncheck("#diff-only")
    expect(same).to_be_visible()
    # Reloaded with the switch on (as a shared link would be), the server hides the same rows.
    page.goto("/models/iris/versions/diff/?v=1&v=2&only=differences")
    expect(same).to_be_hidden()
    expect(page.locator("#diff-only")).to_be_checked()
    # At a phone's width the table scrolls inside its card; the page is not pushed sideways.
    page.set_viewport_size(PHONE)
    page.goto("/models/iris/versions/diff/?v=1&v=2")
    found = overflow(page)
    assert found["extra"] <= 0, found
    _shot(page, "7-diff-phone")
    assert refused == [], refused
