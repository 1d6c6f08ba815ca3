"""The tokens page: scopes, model list, expiry, rate and tokens-per-minute limits; the secret shown once."""

from __future__ import annotations

from accounts.models import ApiToken
from registry import services


def test_token_page_creates_a_restricted_expiring_limited_token_shown_once(client, owner):
    services.model_create(actor=owner, name="iris")
    client.force_login(owner)
    form = {"name": "ci", "scopes": ["predict"], "models": ["iris"], "expires_in_days": "30",
            "rate_limit_per_minute": "90", "tokens_per_minute": "4000"}  # fmt: skip
    page = client.post("/tokens/", form, follow=True).content.decode()
    token = ApiToken.objects.get(name="ci")
    assert token.scopes == ["predict"] and [m.name for m in token.allowed_models.all()] == ["iris"]
    assert token.rate_limit_per_minute == 90 and token.tokens_per_minute == 4000 and token.expires_at is not None
    assert f"mp_{token.prefix}_" in page and 'id="new-token-value"' in page
    again = client.get("/tokens/").content.decode()
    assert 'id="new-token-value"' not in again and "iris" in again and "90" in again and "4000" in again


def test_token_page_names_a_bad_rate_limit(client, owner):
    client.force_login(owner)
    page = client.post("/tokens/", {"name": "x", "rate_limit_per_minute": "-3"}, follow=True).content.decode()
    assert "rate limit must be a whole number" in page and not ApiToken.objects.exists()


def test_token_page_names_a_bad_tokens_per_minute(client, owner):
    client.force_login(owner)
    page = client.post("/tokens/", {"name": "x", "tokens_per_minute": "many"}, follow=True).content.decode()
    assert "tokens per minute must be a whole number" in page and not ApiToken.objects.exists()
