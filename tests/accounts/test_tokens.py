"""API tokens: creation, hashing, bearer authentication, expiry and revocation."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.models import ApiToken
from core.errors import Conflict, InvalidInput

pytestmark = pytest.mark.django_db


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_token_is_shown_once_and_stored_hashed(owner):
    token, secret = services.token_create(user=owner, name="ci")
    assert secret.startswith(f"mp_{token.prefix}_")
    stored = ApiToken.objects.get(pk=token.pk)
    assert secret.split("_", 2)[2] not in (stored.secret_hash, stored.prefix)
    assert stored.secret_hash == ApiToken.hash_secret(secret.split("_", 2)[2])


def test_bearer_token_authenticates_and_records_last_use(owner, registered_model):
    token, secret = services.token_create(user=owner, name="ci")
    response = bearer(secret).get("/api/v1/models/iris/")
    assert response.status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None


@pytest.mark.parametrize("value", ["mp_deadbeef_nope", "nonsense", "mp__", ""])
def test_wrong_tokens_are_401_not_anonymous(owner, registered_model, value):
    response = bearer(value).get("/api/v1/models/")
    assert response.status_code == 401
    assert "error" in response.json()
    assert response["WWW-Authenticate"] == "Bearer"


def test_revoked_token_stops_working_at_once(owner, registered_model):
    token, secret = services.token_create(user=owner, name="ci")
    client = bearer(secret)
    assert client.get("/api/v1/models/").status_code == 200
    services.token_revoke(user=owner, token_id=token.pk)
    response = client.get("/api/v1/models/")
    assert response.status_code == 401
    assert "invalid, expired or revoked" in response.json()["error"]


def test_expired_token_is_refused(owner):
    token, secret = services.token_create(user=owner, name="ci", expires_at=timezone.now() + dt.timedelta(hours=1))
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert bearer(secret).get("/api/v1/models/").status_code == 401


def test_token_validation_errors(owner):
    services.token_create(user=owner, name="ci")
    with pytest.raises(Conflict):
        services.token_create(user=owner, name="ci")
    with pytest.raises(InvalidInput, match="Unknown scope"):
        services.token_create(user=owner, name="x", scopes=["root"])
    with pytest.raises(InvalidInput, match="future"):
        services.token_create(user=owner, name="y", expires_at=timezone.now() - dt.timedelta(days=1))


def test_token_api_create_list_revoke_only_own(api, owner, member):
    client = api(owner)
    response = client.post("/api/v1/tokens/", {"name": "deploy", "scopes": ["read"]}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["token"].startswith("mp_") and body["scopes"] == ["read"] and body["state"] == "active"
    listed = client.get("/api/v1/tokens/").json()["results"]
    assert [t["name"] for t in listed] == ["deploy"] and "token" not in listed[0]
    assert api(member).delete(f"/api/v1/tokens/{body['id']}/").status_code == 404
    assert client.delete(f"/api/v1/tokens/{body['id']}/").status_code == 204
    assert bearer(body["token"]).get("/api/v1/models/").status_code == 401


def test_token_page_shows_secret_once(client, owner):
    client.force_login(owner)
    response = client.post("/tokens/", {"name": "laptop", "scopes": ["read", "predict"]}, follow=True)
    secret = response.context["new_token"]
    assert secret.startswith("mp_")
    assert secret in response.content.decode()
    again = client.get("/tokens/")
    assert secret not in again.content.decode()
    token = ApiToken.objects.get(name="laptop")
    assert token.scopes == ["predict", "read"]
    client.post(f"/tokens/{token.pk}/revoke/")
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_a_tokens_per_minute_limit_is_checked_audited_and_carried_by_the_grant(owner):
    with pytest.raises(InvalidInput, match="tokens_per_minute must be between 1 and"):
        services.token_create(user=owner, name="zero", tokens_per_minute=0)
    token, secret = services.token_create(user=owner, name="llm", tokens_per_minute=5000, rate_limit_per_minute=60)
    assert token.tokens_per_minute == 5000
    grant = services.token_authenticate(secret).user.api_grant
    assert (grant.tokens_per_minute, grant.rate_limit_per_minute) == (5000, 60)
    assert (
        services.token_authenticate(services.token_create(user=owner, name="free")[1]).user.api_grant.tokens_per_minute
        is None
    )


def test_the_token_api_takes_and_shows_tokens_per_minute(api, owner):
    client = api(owner)
    created = client.post("/api/v1/tokens/", {"name": "gen", "tokens_per_minute": 1200}, format="json")
    assert created.status_code == 201 and created.json()["tokens_per_minute"] == 1200
    assert client.get("/api/v1/tokens/").json()["results"][0]["tokens_per_minute"] == 1200
    refused = client.post("/api/v1/tokens/", {"name": "bad", "tokens_per_minute": -1}, format="json")
    assert refused.status_code == 400
