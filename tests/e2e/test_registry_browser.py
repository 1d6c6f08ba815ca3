"""A person in Chromium: upload a model, wait for ready, promote it, roll back."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from registry.models import ModelAlias
from tests.conftest import SIGNATURE
from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def upload_version(page: Any, model: str, path: Path) -> int:
    page.goto(f"/models/{model}/upload/")
    page.set_input_files("input[name=file]", str(path))
    page.fill("textarea[name=signature]", json.dumps(SIGNATURE))
    page.fill("input[name=labels]", "setosa, versicolor, virginica")
    # Remember what the progress label showed; the page navigates away once the upload ends.
    page.evaluate(
        """() => {
            const label = document.getElementById("upload-percent");
            new MutationObserver(() => sessionStorage.setItem("uploadShown", label.textContent))
                .observe(label, {childList: true, characterData: true, subtree: true});
        }"""
    )
    page.click("#upload-submit")
    page.wait_for_url(re.compile(rf"/models/{model}/versions/\d+/$"))
    assert page.evaluate("sessionStorage.getItem('uploadShown')") == "100%"
    # The page polls the API and reloads once the worker has validated the version.
    expect(page.locator("h1 .status")).to_have_text("ready", timeout=60_000)
    return int(re.search(r"/versions/(\d+)/$", page.url).group(1))


def test_upload_validate_promote_and_roll_back_in_the_browser(page, owner, model_files, worker):
    login(page, "olivia", "owner-pass-123")
    page.click("text=New model")
    page.fill("input[name=name]", "flowers")
    page.fill("textarea[name=description]", "Iris-like classifier")
    page.click("button:has-text('Create')")
    page.wait_for_url("**/models/flowers/upload/")

    first = upload_version(page, "flowers", model_files["torchscript"])
    expect(page.locator("#signature-table")).to_contain_text("output__0")
    expect(page.locator("#validation-facts")).to_contain_text("Parameters")
    page.click("button[data-action=promote]")
    expect(page.locator(".msg.success")).to_contain_text(f"production now points at version {first}")

    second = upload_version(page, "flowers", model_files["exported_program"])
    page.click("button[data-action=promote]")
    page.goto("/models/flowers/")
    production = page.locator("#alias-table tr[data-alias=production]")
    expect(production).to_contain_text(f"v{second}")

    page.click("button[data-action=rollback]")
    expect(page.locator(".msg.success")).to_contain_text(f"production rolled back to version {first}")
    expect(page.locator("#alias-table tr[data-alias=production]")).to_contain_text(f"v{first}")
    expect(page.locator("#alias-history")).to_contain_text("alias.rollback")
    assert ModelAlias.objects.get(model__name="flowers", name="production").version.version == first


def test_upload_error_is_shown_without_leaving_the_page(page, owner, registered_model, model_files, worker):
    login(page, "olivia", "owner-pass-123")
    page.goto("/models/iris/upload/")
    page.set_input_files("input[name=file]", str(model_files["text"]))
    page.fill("textarea[name=signature]", json.dumps(SIGNATURE))
    page.click("#upload-submit")
    expect(page.locator("#upload-error")).to_contain_text("not a PyTorch model archive")
    assert page.url.endswith("/models/iris/upload/")


def test_try_it_form_predicts_on_the_version_page(page, owner, registered_model, ready_version, worker):
    ready_version(labels=["setosa", "versicolor", "virginica"])
    login(page, "olivia", "owner-pass-123")
    page.goto("/models/iris/versions/1/")
    page.fill("#try-it-inputs", '{"features": [5.1, 3.5, 1.4, 0.2]}')
    page.click("#try-it-submit")
    expect(page.locator("#try-it-labels")).to_contain_text("Predicted: ")
    expect(page.locator("#try-it-outputs")).to_contain_text("output__0")
    # Numbers are rounded for reading (four significant figures).
    shown = json.loads(page.locator("#try-it-outputs").inner_text())["output__0"]
    assert all(float(f"{value:.4g}") == value for row in shown for value in row), shown
    expect(page.locator("#snippet-python")).to_contain_text('client.infer("iris"')
    expect(page.locator("#snippet-curl")).to_contain_text("/v2/models/iris/versions/1/infer")
    page.fill("#try-it-inputs", '{"features": [1, 2]}')
    page.click("#try-it-submit")
    expect(page.locator("#try-it-error")).to_contain_text("features")
