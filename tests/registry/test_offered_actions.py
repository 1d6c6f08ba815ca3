"""What a non-staff user with only a model role is offered, they may do.

Every page such a user reaches is read like a browser would: each POST form on it is submitted
with the values it shows (a savepoint rolls each one back), and each button-styled link is
followed. None may be refused for want of a right (a 403/404, an "authz.denied" audit event or
the refusal's message): what the role does not allow must not be offered at all.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from django.db import transaction
from django.test import Client

from monitoring import services as monitoring_services
from portal import demo
from registry import services
from registry.models import AuditEvent
from tests.monitoring.conftest import npz_file

pytestmark = pytest.mark.django_db

PAGES = ["/", "/models/iris/", "/models/iris/versions/1/", "/models/iris/versions/2/", "/models/iris/compare/",
         "/monitoring/", "/usage/", "/jobs/", "/jobs/new/", "/tokens/"]  # fmt: skip
REFUSALS = ("but not change it this way", "lacks the", "moves only with a second person's approval")


class Forms(HTMLParser):
    """The POST forms (action, fields, submit buttons) and button-styled links of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.links: list[str] = []
        self._form: dict[str, Any] | None = None
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {key: value or "" for key, value in attrs}
        if tag == "a" and "button" in a.get("class", "").split() and a.get("href", "").startswith("/"):
            self.links.append(a["href"])
        if tag == "form" and a.get("method", "").lower() == "post":
            self._form = {"action": a.get("action", ""), "fields": {}, "buttons": []}
            self.forms.append(self._form)
        if self._form is None:
            return
        fields = self._form["fields"]
        if tag == "input" and a.get("name"):
            kind = a.get("type", "text")
            if kind == "checkbox":
                if "checked" in a:
                    fields.setdefault(a["name"], []).append(a.get("value", "on"))
            elif kind == "submit":
                self._form["buttons"].append((a["name"], a.get("value", "")))
            else:
                # A required empty field gets what a person would type; the check is about rights.
                fields[a["name"]] = [a.get("value") or ("probe" if "required" in a else "")]
        elif tag == "select" and a.get("name"):
            self._select = a["name"]
        elif tag == "option" and self._select and self._select not in fields:
            fields[self._select] = [a.get("value", "")]
        elif tag == "textarea" and a.get("name"):
            self._textarea = a["name"]
            fields[a["name"]] = [""]
        elif tag == "button" and a.get("name"):
            self._form["buttons"].append((a["name"], a.get("value", "")))

    def handle_data(self, data: str) -> None:
        if self._form is not None and self._textarea:
            self._form["fields"][self._textarea] = [data]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None


@pytest.fixture
def served_model(owner, registered_model, ready_version):
    """iris: v1 in production, v2 on staging, an evaluation dataset."""
    features, labels = demo._iris_like_data(samples_per_class=10, seed=3)
    ready_version(labels=["setosa", "versicolor", "virginica"])
    ready_version(labels=["setosa", "versicolor", "virginica"])
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    services.alias_set(actor=owner, model=registered_model, name="staging", version_number=2)
    monitoring_services.dataset_create(actor=owner, model=registered_model, name="holdout", filename="h.npz",
                                       file=npz_file(features=features.numpy(), labels=labels.numpy()))  # fmt: skip
    return registered_model


def walk(user: Any) -> list[str]:
    """Every refusal met by submitting what the pages offer `user`."""
    client = Client()
    client.force_login(user)
    refusals = []
    for page in PAGES:
        response = client.get(page)
        assert response.status_code == 200, page
        parsed = Forms()
        parsed.feed(response.content.decode())
        for href in parsed.links:
            if client.get(href).status_code != 200:
                refusals.append(f"{page}: link {href} answers {client.get(href).status_code}")
        for form in parsed.forms:
            if form["action"].startswith("/accounts/logout"):
                continue
            for button in form["buttons"] or [None]:
                data = {name: values for name, values in form["fields"].items() if name != "csrfmiddlewaretoken"}
                if button:
                    data[button[0]] = [button[1]]
                with transaction.atomic():
                    before = AuditEvent.objects.filter(action="authz.denied").count()
                    answer = client.post(form["action"] or page, data, follow=True)
                    denied = AuditEvent.objects.filter(action="authz.denied").count() - before
                    text = answer.content.decode()
                    transaction.set_rollback(True)
                what = f"{page}: form {form['action']} {button or ''}"
                if answer.status_code in (403, 404) or denied:
                    refusals.append(f"{what} answers {answer.status_code}, {denied} denial(s) audited")
                refusals += [f"{what} says {refusal!r}" for refusal in REFUSALS if refusal in text]
    return refusals


@pytest.mark.parametrize(
    ("role", "can_promote"),
    [("viewer", False), ("predictor", False), ("maintainer", False), ("maintainer", True)],
    ids=["viewer", "predictor", "maintainer", "maintainer-with-promote-rights"],
)
def test_a_user_with_only_a_model_role_is_offered_nothing_that_is_then_refused(
    owner, member, served_model, role, can_promote
):
    services.role_grant(actor=owner, model=served_model, role=role, username=member.username, can_promote=can_promote)
    assert walk(member) == []
    # The version page's try-it form (a script's fetch, not a POST form) and its Download link, too.
    client = Client()
    client.force_login(member)
    page = client.get("/models/iris/versions/2/").content.decode()
    assert ('id="try-it-form"' in page) == (role != "viewer")
    assert ("/download/" in page) == (role == "maintainer")


def test_the_owner_is_still_offered_everything(owner, served_model):
    client = Client()
    client.force_login(owner)
    page = client.get("/models/iris/").content.decode()
    for offered in ("Upload version", "Delete model", 'data-action="promote"', "Set alias"):
        assert offered in page, offered


def test_a_maintainer_moves_unprotected_aliases_but_is_not_offered_production(owner, member, served_model):
    services.role_grant(actor=owner, model=served_model, role="maintainer", username=member.username)
    client = Client()
    client.force_login(member)
    page = client.get("/models/iris/").content.decode()
    assert "Upload version" in page and "Set alias" in page
    assert 'data-action="promote"' not in page and "Delete model" not in page
    # staging is not protected: its Delete is offered; production's is not.
    assert "Delete alias staging?" in page and "Delete alias production?" not in page


def test_the_job_form_offers_only_models_the_user_may_predict_with(owner, member, served_model):
    served_model.visibility = "internal"  # every signed-in user is a viewer of it
    served_model.save(update_fields=["visibility"])
    client = Client()
    client.force_login(member)
    page = client.get("/jobs/new/").content.decode()
    assert 'id="job-form"' not in page and "You may run predictions on no model yet" in page
    services.role_grant(actor=owner, model=served_model, role="predictor", username=member.username)
    page = client.get("/jobs/new/").content.decode()
    assert 'id="job-form"' in page and '<option value="iris"' in page
