"""Protected aliases and approvals, audit trail reads, token rules (services and REST API)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services as token_services
from core.errors import Conflict, PermissionDenied
from registry import services
from registry.access import Action, can_override_gate, model_permits
from registry.models import AuditEvent

API = "/api/v1/models/iris"


@pytest.fixture
def two_ready(owner: Any, registered_model: Any, ready_version: Any) -> Any:
    ready_version()
    ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    return registered_model


def test_owner_marked_alias_is_protected_and_promote_rights_move_it(two_ready, owner, member, api):
    services.role_grant(actor=owner, model=two_ready, role="maintainer", username=member.username)
    client = api(member)
    assert client.put(f"{API}/aliases/canary/", {"version": 1}, format="json").status_code == 200
    assert api(owner).put(f"{API}/protected-aliases/canary/", {"protected": True}, format="json").status_code == 200
    refused = client.put(f"{API}/aliases/canary/", {"version": 2}, format="json")
    assert refused.status_code == 403 and "promote" in refused.json()["error"]
    assert client.delete(f"{API}/aliases/canary/").status_code == 403
    # Archiving the version that holds a protected alias would drop it: refused too.
    assert client.post(f"{API}/versions/1/archive/").status_code == 403
    services.role_grant(actor=owner, model=two_ready, role="maintainer", username=member.username, can_promote=True)
    assert client.put(f"{API}/aliases/canary/", {"version": 2}, format="json").status_code == 200
    denied = AuditEvent.objects.filter(action="authz.denied", model=two_ready)
    assert denied.count() == 3 and {e.actor_name for e in denied} == {member.username}
    assert (
        api(owner).put(f"{API}/protected-aliases/production/", {"protected": False}, format="json").status_code == 400
    )


def test_approval_flow_request_approve_reject_and_no_self_approval(two_ready, owner, member, outsider, api):
    services.alias_protect(actor=owner, model=two_ready, name="production", require_approval=True)
    services.role_grant(actor=owner, model=two_ready, role="maintainer", username=member.username, can_promote=True)
    direct = api(owner).put(f"{API}/aliases/production/", {"version": 2}, format="json")
    assert direct.status_code == 409 and "approval" in direct.json()["error"]

    made = api(member).post(f"{API}/promotion-requests/", {"alias": "production", "version": 2, "comment": "better"},
                            format="json")  # fmt: skip
    assert made.status_code == 201, made.content
    request_id = made.json()["id"]
    self_approval = api(member).post(f"{API}/promotion-requests/{request_id}/approve/", {}, format="json")
    assert self_approval.status_code == 403 and "your own" in self_approval.json()["error"]
    assert api(outsider).post(f"{API}/promotion-requests/{request_id}/approve/", {}, format="json").status_code == 404
    approved = api(owner).post(f"{API}/promotion-requests/{request_id}/approve/", {"comment": "ok"}, format="json")
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert approved.json()["decided_by"] == owner.username
    assert two_ready.aliases.get(name="production").version.version == 2
    again = api(owner).post(f"{API}/promotion-requests/{request_id}/reject/", {}, format="json")
    assert again.status_code == 409

    second = services.promotion_request_create(actor=owner, model=two_ready, alias="production", version_number=1)
    rejected = services.promotion_request_decide(
        actor=member, model=two_ready, request_id=second.pk, approve=False, comment="not yet"
    )
    assert rejected.status == "rejected" and two_ready.aliases.get(name="production").version.version == 2
    actions = list(AuditEvent.objects.filter(model=two_ready).values_list("action", flat=True))
    assert {"promotion.request", "promotion.approve", "promotion.reject"} <= set(actions)


def test_gate_override_right_is_the_owners(two_ready, owner, member):
    services.role_grant(actor=owner, model=two_ready, role="maintainer", username=member.username, can_promote=True)
    assert model_permits(member, two_ready, Action.PROMOTE)
    assert not can_override_gate(member, two_ready) and can_override_gate(owner, two_ready)


def test_role_changes_are_audited_and_only_owners_manage(two_ready, owner, member, outsider):
    grant = services.role_grant(actor=owner, model=two_ready, role="viewer", username=member.username)
    services.role_grant(actor=owner, model=two_ready, role="predictor", username=member.username)
    with pytest.raises(PermissionDenied):
        services.role_grant(actor=member, model=two_ready, role="owner", username=member.username)
    services.role_revoke(actor=owner, model=two_ready, role_id=grant.pk)
    events = AuditEvent.objects.filter(object_type="role").order_by("id")
    assert [(e.action, e.before, e.after) for e in events] == [
        ("role.grant", None, {"role": "viewer", "can_promote": False}),
        ("role.change", {"role": "viewer", "can_promote": False}, {"role": "predictor", "can_promote": False}),
        ("role.revoke", {"role": "predictor", "can_promote": False}, None),
    ]
    assert not model_permits(member, two_ready, Action.VIEW)


def test_audit_events_are_append_only(two_ready):
    event = AuditEvent.objects.filter(model=two_ready).first()
    event.action = "tampered"
    with pytest.raises(ValueError, match="append-only"):
        event.save()
    with pytest.raises(ValueError, match="append-only"):
        event.delete()


def test_audit_carries_request_id_and_exports_csv_and_json(two_ready, owner, api):
    client = api(owner)
    response = client.put(f"{API}/aliases/staging/", {"version": 2}, format="json", HTTP_X_REQUEST_ID="req-42")
    assert response["X-Request-ID"] == "req-42"
    assert AuditEvent.objects.get(object_repr="staging").request_id == "req-42"
    exported = client.get("/api/v1/audit-events/export/", {"export": "csv", "action": "alias.move"})
    assert exported.status_code == 200 and exported["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.content.decode())))
    assert [(r["object"], json.loads(r["after"])["version"]) for r in rows] == [("staging", 2), ("production", 1)]
    as_json = client.get("/api/v1/audit-events/export/", {"export": "json", "model": "iris", "action": "alias.move"})
    assert [e["object"] for e in json.loads(as_json.content)] == ["staging", "production"]
    assert client.get("/api/v1/audit-events/export/", {"export": "xml"}).status_code == 400
    assert client.get("/api/v1/audit-events/", {"action": "alias.move"}).json()["count"] == 2


def test_which_version_served_production_at_time_t(two_ready, owner, api):
    first = AuditEvent.objects.get(object_repr="production", after__version=1).created_at
    services.alias_set(actor=owner, model=two_ready, name="production", version_number=2)
    moved = AuditEvent.objects.get(object_repr="production", after__version=2).created_at
    client = api(owner)

    def at(when: Any) -> Any:
        return client.get(f"{API}/aliases/production/at/", {"time": when.isoformat()}).json()["version"]

    assert at(first) == 1 and at(moved) == 2
    assert at(first - timezone.timedelta(days=1)) is None
    bad = client.get(f"{API}/aliases/production/at/", {"time": "yesterday"})
    assert bad.status_code == 400 and "ISO 8601" in bad.json()["error"]


def test_token_rules_models_expiry_limit_and_audit(two_ready, owner, outsider, api):
    client = api(owner)
    made = client.post("/api/v1/tokens/", {"name": "ci", "scopes": ["predict"], "models": ["iris"],
                                           "rate_limit_per_minute": 60}, format="json")  # fmt: skip
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["models"] == ["iris"] and body["rate_limit_per_minute"] == 60 and body["token"].startswith("mp_")
    assert "token" not in client.get("/api/v1/tokens/").json()["results"][0]
    hidden = api(outsider).post("/api/v1/tokens/", {"name": "x", "models": ["iris"]}, format="json")
    assert hidden.status_code == 400 and "Unknown model" in hidden.json()["error"]
    assert client.post("/api/v1/tokens/", {"name": "y", "rate_limit_per_minute": 0}, format="json").status_code == 400
    token_services.token_revoke(user=owner, token_id=body["id"])
    assert [e.action for e in AuditEvent.objects.filter(object_type="token")] == ["token.revoke", "token.create"]
    revoked = APIClient()
    revoked.credentials(HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    assert revoked.get("/api/v1/models/").status_code == 401


def test_an_approval_required_alias_cannot_be_set_directly_by_a_service_caller(two_ready, owner):
    services.alias_protect(actor=owner, model=two_ready, name="production", require_approval=True)
    with pytest.raises(Conflict):
        services.alias_set(actor=owner, model=two_ready, name="production", version_number=2)


def test_model_page_shows_roles_and_the_audit_trail(two_ready, owner, member, client):
    services.role_grant(actor=owner, model=two_ready, role="predictor", username=member.username)
    services.alias_set(actor=owner, model=two_ready, name="production", version_number=2)
    client.force_login(owner)
    page = client.get("/models/iris/").content.decode()
    assert 'id="audit-trail"' in page and "role.grant" in page and "alias.move" in page
    # Changes read as changes, not as raw documents.
    assert "version: v1 → v2" in page and "{&#x27;version&#x27;" not in page
    assert 'id="roles"' in page and "predictor" in page
    assert "export=csv&amp;model=iris" in page


def test_admin_revoke_goes_through_the_service(two_ready, owner, admin_client):
    token, _ = token_services.token_create(user=owner, name="admin-revoked")
    response = admin_client.post(
        "/admin/accounts/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}, follow=True
    )
    assert response.status_code == 200
    token.refresh_from_db()
    assert token.revoked_at is not None
    event = AuditEvent.objects.get(action="token.revoke")
    assert event.actor_name == "admin"
