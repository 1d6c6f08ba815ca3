"""A person in Chromium with a Hugging Face model: upload its zipped directory, see it validated,
ask "[MASK]" (or a review's sentiment) in the try-it form and read the ranked answers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from portal import demo_text
from portal.text_models import directory_zip
from registry import services
from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's trained fill-mask and sentiment models, zipped as a user would upload them."""
    root = tmp_path_factory.mktemp("text-browser")
    return {
        "fill-mask": directory_zip(demo_text.fill_mask_build(root / "capitals"), root / "capitals.zip"),
        "sentiment": directory_zip(demo_text.sentiment_build(root / "sentiment"), root / "sentiment.zip"),
    }


def csp_violations(page: Any) -> list[str]:
    """Console messages of what the Content-Security-Policy refused on the page (collected as it runs)."""
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text
            else None)  # fmt: skip
    return refused


def upload(page: Any, model: str, archive: Path, task: str) -> None:
    page.goto(f"/models/{model}/upload/")
    page.set_input_files("input[name=file]", str(archive))
    page.select_option("select[name=task]", task)
    page.click("#upload-submit")
    page.wait_for_url(re.compile(rf"/models/{model}/versions/1/$"))
    # The page polls the API and reloads once the worker has validated the version.
    expect(page.locator("h1 .status")).to_have_text("ready", timeout=90_000)


def test_a_fill_mask_model_uploaded_in_the_browser_answers_the_mask(page, owner, archives, worker):
    services.model_create(actor=owner, name="capitals", description="a tiny BERT")
    refused = csp_violations(page)
    login(page, "olivia", "owner-pass-123")
    upload(page, "capitals", archives["fill-mask"], "fill-mask")
    expect(page.locator("#version-task")).to_contain_text("fill-mask")
    expect(page.locator("#try-it-mask-note")).to_contain_text("The mask marker is [MASK]")

    page.fill("#try-it-text", "Paris is the [MASK] of France.")
    page.fill("#try-it-top-k", "3")
    page.click("#try-it-submit")
    rows = page.locator("#try-it-answers tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("capital")
    expect(rows.first).to_contain_text("Paris is the capital of France.")
    expect(rows.first.locator("meter")).to_have_count(1)
    assert re.search(r"\d+\.\d %", rows.first.inner_text())
    expect(page.locator("#try-it-timing")).to_contain_text("tokens")

    # A text without the marker: the endpoint's 400 is shown, the page stays.
    page.fill("#try-it-text", "Paris is the capital of France.")
    page.click("#try-it-submit")
    expect(page.locator("#try-it-error")).to_contain_text("[MASK]")
    expect(page.locator("#try-it-result")).to_be_hidden()
    assert refused == []


def test_a_sentiment_model_with_its_task_inferred_labels_a_review(page, owner, archives, worker):
    services.model_create(actor=owner, name="reviews", description="a tiny BERT classifier")
    login(page, "olivia", "owner-pass-123")
    upload(page, "reviews", archives["sentiment"], "")
    expect(page.locator("#version-task")).to_contain_text("text classification")
    expect(page.locator("#try-it-mask-note")).to_have_count(0)
    page.fill("#try-it-text", "What a wonderful film, I loved it!")
    page.fill("#try-it-top-k", "2")
    page.click("#try-it-submit")
    rows = page.locator("#try-it-answers tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("positive")
    expect(rows.nth(1)).to_contain_text("negative")
