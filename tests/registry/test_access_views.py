"""The model page's access forms: each refusal is a message on the page, and nothing is written."""

from __future__ import annotations

import pytest
from django.test import Client

from registry import services
from registry.models import ModelRole

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_owner_grants_and_revokes_a_role_from_the_model_page(owner, member, registered_model):
    client = _client(owner)
    response = client.post("/models/iris/roles/", {"kind": "user", "who": "mark", "role": "predictor"}, follow=True)
    assert "User mark is now predictor of iris." in response.content.decode()
    grant = ModelRole.objects.get(model=registered_model, user=member)
    assert grant.role == "predictor" and not grant.can_promote
    client.post(f"/models/iris/roles/{grant.pk}/revoke/", follow=True)
    assert not ModelRole.objects.filter(model=registered_model).exists()


def test_bad_or_unauthorised_role_forms_are_refused_with_a_message(owner, member, outsider, registered_model):
    unknown = _client(owner).post("/models/iris/roles/", {"kind": "user", "who": "nobody", "role": "viewer"},
                                  follow=True)  # fmt: skip
    assert "No active user &#x27;nobody&#x27;" in unknown.content.decode()
    wrong_role = _client(owner).post("/models/iris/roles/", {"kind": "user", "who": "mark", "role": "king"},
                                     follow=True)  # fmt: skip
    assert "role must be one of" in wrong_role.content.decode()
    # A stranger does not learn the model exists; a viewer is told they may not.
    assert _client(outsider).post("/models/iris/roles/", {"who": "oscar", "role": "owner"}).status_code == 404
    services.role_grant(actor=owner, model=registered_model, role="viewer", username="mark")
    refused = _client(member).post("/models/iris/roles/", {"kind": "user", "who": "oscar", "role": "owner"},
                                   follow=True)  # fmt: skip
    assert refused.status_code == 200 and "ask its owner" in refused.content.decode()
    assert list(ModelRole.objects.filter(model=registered_model).values_list("user__username", "role")) == [
        ("mark", "viewer")
    ]


def test_a_promotion_request_needs_promote_rights_and_a_version(owner, member, registered_model, ready_version):
    ready_version()
    services.role_grant(actor=owner, model=registered_model, role="maintainer", username="mark")
    refused = _client(member).post("/models/iris/promotion-requests/", {"alias": "production", "version": "1"},
                                   follow=True)  # fmt: skip
    assert "ask its owner" in refused.content.decode()
    no_version = _client(owner).post("/models/iris/promotion-requests/", {"alias": "production", "version": ""},
                                     follow=True)  # fmt: skip
    assert "Choose a version." in no_version.content.decode()
    assert not registered_model.promotion_requests.exists()
    made = _client(owner).post("/models/iris/promotion-requests/", {"alias": "production", "version": "1"},
                               follow=True)  # fmt: skip
    assert "another person with promote rights decides" in made.content.decode()
    request = registered_model.promotion_requests.get()
    own = _client(owner).post(f"/models/iris/promotion-requests/{request.pk}/approve/", follow=True)
    assert "cannot decide your own promotion request" in own.content.decode()
    request.refresh_from_db()
    assert request.status == "pending"
