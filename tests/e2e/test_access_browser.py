"""A person in Chromium manages access: grants a role, then approves a promotion request."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from registry import services
from registry.models import AuditEvent, ModelAlias
from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_owner_grants_a_role_and_approves_the_promotion_it_asked_for(page, owner, member, registered_model,
                                                                     ready_version):  # fmt: skip
    ready_version()
    ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    services.alias_protect(actor=owner, model=registered_model, name="production", require_approval=True)

    login(page, "olivia", "owner-pass-123")
    page.goto("/models/iris/")
    form = page.locator("#role-form")
    form.locator("input[name=who]").fill("mark")
    form.locator("select[name=role]").select_option("maintainer")
    form.locator("input[name=can_promote]").check()
    form.locator("button[type=submit]").click()
    expect(page.locator("#roles")).to_contain_text("mark")
    expect(page.locator("#roles tbody tr").first).to_contain_text("maintainer")
    # The maintainer now has promote rights: asking for production is allowed, moving it is not.
    made = services.promotion_request_create(
        actor=member, model=registered_model, alias="production", version_number=2, comment="better on holdout"
    )

    page.goto("/models/iris/")
    pending = page.locator("#pending-requests li").filter(has_text=f"#{made.pk}")
    expect(pending).to_contain_text("better on holdout")
    pending.locator("input[name=comment]").first.fill("looks good")
    pending.get_by_role("button", name="Approve").click()
    expect(page.locator("body")).to_contain_text(f"Request #{made.pk} approved")
    assert ModelAlias.objects.get(model=registered_model, name="production").version.version == 2
    approval = AuditEvent.objects.get(model=registered_model, action="promotion.approve")
    assert approval.actor == owner and approval.after["comment"] == "looks good"
    expect(page.locator("#audit-trail")).to_contain_text("promotion.approve")
