"""The three people the portal is for, each walking their path in Chromium, a screenshot per step.

- ML engineer: signs in, uploads a model, watches it validate, evaluates it, promotes it past
  the warning that it did worse than production, looks at the charts.
- Application developer: creates a token, copies the export line and the curl snippet, and the
  snippet, run as pasted in a shell, answers from the model.
- Operator: the usage page, the monitoring dashboard, a role granted on a model, the audit trail
  that records it, /metrics and /healthz.

The pages come from the portal's ASGI app under uvicorn (the session's gateway) with a real
worker behind it, as in production. Screenshots land in test-results/personas/<database>/<flow>/
(PERSONA_SCREENSHOTS overrides the root): CI keeps test-results/ as its artifacts, and a run on
SQLite and one on PostgreSQL each keep their own. Any console error (a CSP refusal included)
fails the flow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from django.db import connection
from playwright.sync_api import expect

from accounts import services as token_services
from core import redis as shared_redis
from core.invalidation import INVALIDATE_CHANNEL
from monitoring import services as monitoring_services
from monitoring.models import EvaluationRun, RunStatus
from portal import demo
from registry import services
from registry.models import ModelAlias
from tests.conftest import SIGNATURE, upload_file
from tests.monitoring.conftest import npz_file
from tests.worker import METRICS_AUTH

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["setosa", "versicolor", "virginica"]
PASSWORDS = {"olivia": "owner-pass-123", "mark": "member-pass-123", "opal": "operator-pass-123"}


class Steps:
    """A signed-in page that saves a numbered screenshot per step and collects console errors."""

    def __init__(self, page: Any, directory: Path) -> None:
        self.page = page
        self.directory = directory
        self.count = 0
        self.errors: list[str] = []
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("response", lambda r: self.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)

    def shot(self, name: str, *, full_page: bool = True) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def sign_in(self, username: str) -> None:
        self.page.goto("/accounts/login/")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", PASSWORDS[username])
        self.shot("sign-in")
        self.page.click("button[type=submit]")
        self.page.wait_for_url(re.compile(r"/$"))


def screenshots_root() -> Path:
    configured = os.environ.get("PERSONA_SCREENSHOTS")
    return Path(configured) if configured else ROOT / "test-results" / "personas" / connection.vendor


@pytest.fixture
def person(chromium: Any, gateway_url: str, settings: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Opens a flow: `person(username)` gives its Steps on a fresh browser context against the gateway."""
    # The tests hash passwords with MD5 (fast), which the gateway process does not accept.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    # Earlier tests' rows are gone (flushed without signals): make the gateway forget them.
    shared_redis.client().publish(INVALIDATE_CHANNEL, "test")
    contexts: list[Any] = []
    opened: list[Steps] = []

    def open_flow(user: Any, flow: str) -> Steps:
        user.set_password(PASSWORDS[user.username])
        user.save(update_fields=["password"])
        context = chromium.new_context(base_url=gateway_url, viewport={"width": 1280, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway_url)
        context.set_default_timeout(30_000)
        contexts.append(context)
        steps = Steps(context.new_page(), screenshots_root() / flow)
        opened.append(steps)
        return steps

    yield open_flow
    for context in contexts:
        context.close()
    for steps in opened:
        assert steps.errors == [], f"console errors in {steps.directory.name}: {steps.errors}"


def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def clipboard(page: Any) -> str:
    return str(page.evaluate("navigator.clipboard.readText()"))


@pytest.fixture
def production_iris(owner: Any, tmp_path: Path) -> Any:
    """Model `flowers` with a well-trained v1 in production, validated in this process."""
    from inference import validation

    model = services.model_create(actor=owner, name="flowers", description="Iris-like classifier", tags=["tabular"])
    good = demo.save_torchscript(demo.iris_classifier(), tmp_path / "good.pt")
    version = upload_file(owner, model, good, labels=LABELS, enqueue=False)
    assert validation.version_validate(version.pk) == "ready"
    services.alias_set(actor=owner, model=model, name="production", version_number=version.version)
    return model


def test_ml_engineer_uploads_validates_evaluates_and_promotes_past_the_warning(
    person, owner, production_iris, worker, tmp_path
):
    features, labels = demo._iris_like_data(samples_per_class=40, seed=3)
    monitoring_services.dataset_create(
        actor=owner, model=production_iris, name="holdout", filename="holdout.npz",
        file=npz_file(features=features.numpy().astype(np.float32), labels=labels.numpy()),
    )  # fmt: skip
    # Production's own evaluation runs on the worker while the engineer uploads the candidate.
    dataset = monitoring_services.dataset_get(production_iris, "holdout")
    monitoring_services.evaluation_start(actor=owner, version=production_iris.versions.get(), dataset=dataset)
    candidate = demo.save_torchscript(demo.iris_classifier(steps=0, seed=5), tmp_path / "untrained.pt")

    steps = person(owner, "ml-engineer")
    page = steps.page
    steps.sign_in("olivia")
    expect(page.locator("h1")).to_have_text("Models")
    steps.shot("models")
    page.click("a:has-text('flowers')")
    expect(page.locator("#alias-table tr[data-alias=production]")).to_contain_text("v1")
    steps.shot("model-page")

    page.click("a:has-text('Upload version')")
    page.set_input_files("input[name=file]", str(candidate))
    page.fill("textarea[name=signature]", json.dumps(SIGNATURE))
    page.fill("input[name=labels]", ", ".join(LABELS))
    steps.shot("upload-form")
    page.click("#upload-submit")
    page.wait_for_url(re.compile(r"/models/flowers/versions/2/$"))
    steps.shot("version-validating")
    # The page follows the worker's validation and reloads once it has settled.
    expect(page.locator("h1 .status")).to_have_text("ready", timeout=60_000)
    expect(page.locator("#validation-facts")).to_contain_text("Parameters")
    steps.shot("version-ready")

    page.goto("/models/flowers/compare/")
    until(lambda: EvaluationRun.objects.filter(status=RunStatus.SUCCEEDED).exists(), 60, "production was evaluated")
    page.reload()
    expect(page.locator("#run-table")).to_contain_text("succeeded")
    page.select_option("select[name=version]", "2")
    page.select_option("select[name=dataset]", "holdout")
    steps.shot("compare-before-evaluation")
    page.click("button:has-text('Start evaluation')")
    page.wait_for_url(re.compile(r"/evaluations/[0-9a-f-]+/$"))
    # The run page shows the live status (no "queued" flash that outlives it) and reloads when it ends.
    expect(page.locator(".messages")).to_have_count(0)
    expect(page.locator("h1")).to_contain_text("v2 on holdout")
    expect(page.locator("[data-job-api] .status")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#run-metrics")).to_contain_text("Accuracy")
    steps.shot("evaluation-succeeded")

    page.click(".crumbs a:has-text('flowers')")
    asked: list[str] = []

    def answer(dialog: Any, accept: bool) -> None:
        asked.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, accept=False))
    page.click("button[data-action=promote]")
    expect(page.locator("#alias-table tr[data-alias=production]")).to_contain_text("v1")
    assert len(asked) == 1 and re.search(r"v2's accuracy on holdout is 0\.\d+, worse than production \(v1\)", asked[0])
    steps.shot("promotion-warned-and-dismissed")
    page.once("dialog", lambda dialog: answer(dialog, accept=True))
    page.click("button[data-action=promote]")
    expect(page.locator(".msg.success")).to_contain_text("production now points at version 2")
    assert ModelAlias.objects.get(model__name="flowers", name="production").version.version == 2
    steps.shot("promoted")

    page.locator("#model-charts").scroll_into_view_if_needed()
    page.wait_for_selector("html[data-charts-drawn]", state="attached")
    expect(page.locator("#chart-confusion")).to_have_attribute("data-has-data", "true")
    # The confusion matrix is production's (now v2) latest evaluation.
    expect(page.locator("#chart-confusion")).to_contain_text("v2 on holdout")
    steps.shot("model-charts")
    page.click("a:has-text('Compare versions')")
    page.wait_for_selector("html[data-charts-drawn]", state="attached")
    expect(page.locator("#chart-accuracy")).to_have_attribute("data-has-data", "true")
    steps.shot("compare-charts")


def test_application_developer_creates_a_token_and_the_copied_snippet_runs_as_pasted(
    person, owner, member, registered_model, ready_version, worker
):
    ready_version(labels=LABELS)
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    services.role_grant(actor=owner, model=registered_model, username=member.username, role="predictor")

    steps = person(member, "app-developer")
    page = steps.page
    steps.sign_in("mark")
    steps.shot("models")
    page.click("a:has-text('API tokens')")
    page.fill("input[name=name]", "my-app")
    page.check("#model-picker input[value=iris]")
    steps.shot("token-form")
    page.click("button:has-text('Create token')")
    expect(page.locator("#new-token")).to_be_visible()
    page.locator("#new-token-export").locator("xpath=..").locator("button.copy").click()
    export = clipboard(page)
    assert re.fullmatch(r"export MAAS_TOKEN=mp_\S+", export), export
    steps.shot("token-created-and-copied")

    page.goto("/models/iris/versions/1/")
    curl = page.locator("#snippet-curl")
    expect(curl).to_contain_text("$MAAS_TOKEN")
    curl.locator("xpath=..").locator("button.copy").click()
    expect(curl.locator("xpath=..").locator("button.copy")).to_have_text("Copied")
    snippet = clipboard(page)
    steps.shot("snippet-copied")

    # Pasted into a shell exactly as copied: the export line, then the snippet.
    shell = subprocess.run(
        ["/bin/bash", "-c", f"{export}\n{snippet}"], capture_output=True, text=True, timeout=60, check=False
    )
    assert shell.returncode == 0, shell.stderr
    answer = json.loads(shell.stdout)
    assert answer["model_name"] == "iris" and answer["model_version"] == "1", answer
    assert answer["outputs"][0]["shape"][0] == 1

    page.click("a:has-text('API docs')")
    expect(page.locator("body")).to_contain_text("/v2")
    steps.shot("api-docs", full_page=False)


def test_operator_reads_usage_grants_a_role_checks_the_trail_and_the_health_endpoints(
    person, owner, member, django_user_model, registered_model, ready_version, gateway_url, worker
):
    ready_version(labels=LABELS)
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    operator = django_user_model.objects.create_user("opal", is_staff=True)
    _, secret = token_services.token_create(user=owner, name="traffic")
    body = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    for _ in range(5):
        reply = requests.post(f"{gateway_url}/v2/models/iris/infer", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
        assert reply.status_code == 200, reply.text

    steps = person(operator, "operator")
    page = steps.page
    steps.sign_in("opal")
    page.click("nav a:has-text('Usage')")
    expect(page.locator("h1")).to_contain_text("usage")
    steps.shot("usage")
    page.click("nav a:has-text('Monitoring')")

    # The serving aggregates reach the database within a second or so (METRICS_FLUSH_SECONDS).
    def scraped() -> str:
        return requests.get(f"{gateway_url}/metrics", headers=METRICS_AUTH, timeout=10).text

    until(lambda: scraped().count('model="iris"') > 0, 30, "metrics")
    page.reload()
    page.wait_for_selector("html[data-charts-drawn]", state="attached")
    steps.shot("monitoring")

    page.goto("/models/iris/")
    page.fill("#role-form input[name=who]", "mark")
    page.select_option("#role-form select[name=role]", "viewer")
    page.click("#role-form button[type=submit]")
    expect(page.locator("#roles")).to_contain_text("mark")
    page.locator("#access").scroll_into_view_if_needed()
    steps.shot("role-granted", full_page=False)
    expect(page.locator("#audit-trail")).to_contain_text("role.grant")
    page.locator("#audit-trail").scroll_into_view_if_needed()
    steps.shot("audit-trail", full_page=False)

    page.goto("/metrics")
    expect(page.locator("body")).to_contain_text("maas_requests_total")
    steps.shot("metrics", full_page=False)
    page.goto("/healthz")
    expect(page.locator("body")).to_contain_text('"status": "ok"')
    steps.shot("healthz", full_page=False)
