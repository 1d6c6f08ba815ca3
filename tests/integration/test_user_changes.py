"""Deactivating a user, changing group membership or a group's role holds on /v2 at once.

Each change is confirmed by every gateway before the call that made it returns (as a token
revocation is), so the very next request sees it: no polling, no waiting for a cache TTL.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from accounts import services as token_services
from registry.roles import ModelRole
from tests.integration.conftest import infer_json

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]

BODY = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


def _warm(gateway_url: str, secret: str) -> None:
    """Two answered calls: the gateway now holds the caller and the route in its caches."""
    for _ in range(2):
        answer = infer_json(gateway_url, secret, "iris", BODY)
        assert answer.status_code == 200, answer.text


def test_a_deactivated_users_token_stops_at_once(gateway_url, token, served, owner):
    _warm(gateway_url, token)
    owner.is_active = False
    owner.save()
    refused = infer_json(gateway_url, token, "iris", BODY)
    assert refused.status_code == 401, refused.text

    owner.is_active = True
    owner.save()
    assert infer_json(gateway_url, token, "iris", BODY).status_code == 200


def test_leaving_a_group_or_the_groups_role_changing_holds_at_once(
    gateway_url, token, served, owner, member, registered_model
):
    team = Group.objects.create(name="team")
    member.groups.add(team)
    role = ModelRole.objects.create(model=registered_model, group=team, role="predictor")
    secret = token_services.token_create(user=member, name="member")[1]
    _warm(gateway_url, secret)

    role.role = "viewer"
    role.save()
    assert infer_json(gateway_url, secret, "iris", BODY).status_code == 403

    role.role = "predictor"
    role.save()
    _warm(gateway_url, secret)
    member.groups.remove(team)
    assert infer_json(gateway_url, secret, "iris", BODY).status_code == 404  # no role left: not visible

    member.groups.add(team)
    _warm(gateway_url, secret)
    role.delete()
    assert infer_json(gateway_url, secret, "iris", BODY).status_code == 404
