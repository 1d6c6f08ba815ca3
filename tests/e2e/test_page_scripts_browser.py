"""The pages' small scripts under the portal's own Content-Security-Policy: destructive buttons ask
first, code blocks copy with one click.

Inline `onsubmit="return confirm(...)"` handlers are blocked by `script-src 'self'`, so a
Delete used to delete at once; the confirmation now comes from a static script reading
`data-confirm`. A page that logs a CSP refusal fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from registry import services
from registry.models import RegisteredModel
from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
INLINE_HANDLER = re.compile(r"\son[a-z]+\s*=", re.IGNORECASE)


def _csp_refusals(page: Any) -> list[str]:
    refused: list[str] = []
    page.on(
        "console",
        lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None,
    )
    return refused


def test_delete_model_asks_and_a_dismissed_dialog_keeps_the_model(page, owner):
    services.model_create(actor=owner, name="keep-me", description="must survive a dismissed dialog")
    refused = _csp_refusals(page)
    login(page, "olivia", "owner-pass-123")
    page.goto("/models/keep-me/")

    asked: list[str] = []

    def dismiss(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click("button:has-text('Delete model')")
    expect(page.locator("h1")).to_contain_text("keep-me")
    assert asked == ["Delete keep-me, all its versions and their artifacts?"]
    assert RegisteredModel.objects.filter(name="keep-me").exists()

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Delete model')")
    page.wait_for_url(lambda url: "keep-me" not in url)
    assert not RegisteredModel.objects.filter(name="keep-me").exists()
    assert refused == []


def test_pages_log_no_csp_refusals_and_fetch_nothing_missing(page, owner):
    services.model_create(actor=owner, name="quiet")
    refused = _csp_refusals(page)
    missing: list[str] = []
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    login(page, "olivia", "owner-pass-123")
    for path in ("/", "/models/quiet/", "/models/quiet/upload/", "/jobs/", "/tokens/", "/monitoring/"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
    assert refused == [], refused
    assert missing == [], missing  # the favicon too


def test_no_template_has_an_inline_event_handler():
    offenders = [
        f"{path.relative_to(TEMPLATES)}:{number}"
        for path in TEMPLATES.rglob("*.html")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if INLINE_HANDLER.search(line)
    ]
    assert offenders == [], f"inline handlers are blocked by the CSP: {offenders}"


def test_a_new_token_is_copied_with_one_click(page, owner):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    refused = _csp_refusals(page)
    login(page, "olivia", "owner-pass-123")
    page.goto("/tokens/")
    page.fill("input[name=name]", "laptop")
    page.click("button:has-text('Create token')")
    token = page.locator("#new-token-value").inner_text()
    assert token.startswith("mp_")
    button = page.locator("#new-token pre:has(#new-token-value) button.copy")
    button.click()
    expect(button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == token
    assert page.locator("#new-token-export").inner_text() == f"export MAAS_TOKEN={token}"
    assert refused == []


def test_token_model_picker_filters_and_keeps_ticked_models_in_view(page, owner):
    for name in ("iris", "iris-large", "sentiment", "embeddings"):
        services.model_create(actor=owner, name=name)
    refused = _csp_refusals(page)
    login(page, "olivia", "owner-pass-123")
    page.goto("/tokens/")
    picker = page.locator("#model-picker")
    picker.locator("input[value=sentiment]").check()
    expect(page.locator("#model-picker-summary")).to_have_text("(1 ticked: sentiment)")
    page.fill("#model-picker-filter", "iris")
    visible = picker.locator("label.check:visible")
    # The matches, and the ticked model even though it does not match.
    expect(visible).to_have_count(3)
    assert sorted(text.strip() for text in visible.all_inner_texts()) == ["iris", "iris-large", "sentiment"]
    page.keyboard.press("Enter")  # stays on the page: Enter in the filter does not submit
    picker.locator("input[value=iris-large]").check()
    page.fill("input[name=name]", "scoped")
    page.click("button:has-text('Create token')")
    assert page.locator("#new-token-value").inner_text().startswith("mp_")
    row = page.locator("#token-table tr:has-text('scoped')")
    expect(row).to_contain_text("iris-large, sentiment")
    assert refused == []
