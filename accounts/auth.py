"""DRF authentication by `Authorization: Bearer <token>`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts import token_throttle
from accounts.models import ApiToken
from accounts.services import token_authenticate
from core import redis as shared_redis


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """Authenticates API tokens; a wrong, expired or revoked token is a 401, never anonymous."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        keyword, _, value = header.partition(" ")
        if keyword.lower() != self.keyword.lower():
            return None
        value = value.strip()
        if not value:
            raise exceptions.AuthenticationFailed("The Authorization header has no token after 'Bearer'.")
        client, address = _limiter(), request.META.get("REMOTE_ADDR") or "local"
        if client is not None:
            token_throttle.admit(client, address)  # 429 after too many bad tokens from this address
        token = token_authenticate(value)
        if token is None:
            if client is not None:
                token_throttle.failed(client, address)
            raise exceptions.AuthenticationFailed("The API token is invalid, expired or revoked.")
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


def _limiter() -> Any:
    """The shared Redis of the bad-token throttle, or None when none is configured (not throttled)."""
    try:
        return shared_redis.client()
    except shared_redis.RedisUnconfigured:
        return None


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Documents the bearer scheme in the OpenAPI schema."""

    target_class = "accounts.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API token: mp_<prefix>_<secret>"}
