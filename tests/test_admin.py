"""The Django admin lists every model with its columns, filters and search."""

from __future__ import annotations

import pytest

from accounts import services as token_services
from registry import services

pytestmark = pytest.mark.django_db

PAGES = [
    "/admin/registry/registeredmodel/?q=iris",
    "/admin/registry/modelversion/?status__exact=ready",
    "/admin/registry/modelalias/",
    "/admin/registry/auditevent/?action=alias.move",
    "/admin/registry/tag/",
    "/admin/accounts/apitoken/",
]


def test_admin_pages_render_for_staff(client, admin_user, owner, registered_model, ready_version):
    version = ready_version()
    services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    token_services.token_create(user=owner, name="ci")
    client.force_login(admin_user)
    detail = [
        f"/admin/registry/registeredmodel/{registered_model.pk}/change/",
        f"/admin/registry/modelversion/{version.pk}/change/",
    ]
    for url in [*PAGES, *detail]:
        response = client.get(url)
        assert response.status_code == 200, url
    assert "alias.move" in client.get("/admin/registry/auditevent/").content.decode()


def test_audit_log_is_read_only_in_admin(client, admin_user, owner, registered_model):
    client.force_login(admin_user)
    assert client.get("/admin/registry/auditevent/add/").status_code == 403
    event_id = registered_model.audit_events.first().pk
    assert client.post(f"/admin/registry/auditevent/{event_id}/delete/", {"post": "yes"}).status_code == 403
