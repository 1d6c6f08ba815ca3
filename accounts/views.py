"""API tokens: REST endpoints and the browser page where people create them."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import services
from accounts.models import ApiToken
from core.errors import InvalidInput, PortalError
from registry.access import Scope
from registry.selectors import models_visible_to


class TokenSerializer(serializers.ModelSerializer):
    state = serializers.CharField(read_only=True)
    models: Any = serializers.SlugRelatedField(source="allowed_models", slug_field="name", many=True, read_only=True)

    class Meta:
        model = ApiToken
        fields = [
            *("id", "name", "prefix", "scopes", "models", "rate_limit_per_minute", "tokens_per_minute", "state"),
            *("created_at", "expires_at", "last_used_at", "revoked_at"),
        ]
        read_only_fields = fields


class TokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices), required=False)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    models = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=100, help_text="Only these models."
    )
    rate_limit_per_minute = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=1_000_000, help_text="Predictions per minute."
    )
    tokens_per_minute = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=services.MAX_TOKENS_PER_MINUTE,
        help_text="Model tokens (prompt and completion) per minute; a request is refused 429 once they are used.",
    )


class TokenCreatedSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The secret; shown only in this response.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


@extend_schema_view(
    list=extend_schema(summary="Your API tokens"),
    create=extend_schema(
        summary="Create a token (its secret is shown once)",
        request=TokenCreateSerializer,
        responses={201: TokenCreatedSerializer},
    ),
    destroy=extend_schema(
        summary="Revoke a token", responses={204: None, 404: OpenApiResponse(description="Unknown token")}
    ),
)
class TokenViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = TokenSerializer
    queryset = ApiToken.objects.none()
    # A token may list tokens with "read"; creating and revoking them takes "admin".
    required_scope = {"GET": "read", "POST": "admin", "DELETE": "admin"}

    def get_queryset(self) -> QuerySet[ApiToken]:
        return ApiToken.objects.filter(user=cast(Any, self.request.user)).prefetch_related("allowed_models")

    def create(self, request: Request) -> Response:
        serializer = TokenCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, secret = services.token_create(user=request.user, **serializer.validated_data)
        data = TokenSerializer(token).data | {"token": secret}
        return Response(data, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, pk: str) -> Response:
        services.token_revoke(user=request.user, token_id=int(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


def _positive_or_none(raw: str, what: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidInput(f"The {what} must be a whole number above 0, or empty.")
    return int(raw)


def _expiry(raw: str) -> dt.datetime | None:
    days = _positive_or_none(raw, "expiry in days")
    return None if days is None else timezone.now() + dt.timedelta(days=min(days, 3650))


@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    """The tokens page; a new token's secret is shown once, right after creation."""
    if request.method == "POST":
        try:
            _, secret = services.token_create(
                user=request.user,
                name=request.POST.get("name", ""),
                scopes=request.POST.getlist("scopes") or None,
                models=[name for name in request.POST.getlist("models") if name] or None,
                expires_at=_expiry(request.POST.get("expires_in_days", "")),
                rate_limit_per_minute=_positive_or_none(request.POST.get("rate_limit_per_minute", ""), "rate limit"),
                tokens_per_minute=_positive_or_none(request.POST.get("tokens_per_minute", ""), "tokens per minute"),
            )
        except PortalError as exc:
            messages.error(request, exc.message)
        else:
            request.session["new_token"] = secret
        return redirect("token-list")
    context = {
        "tokens": ApiToken.objects.filter(user=cast(Any, request.user)).prefetch_related("allowed_models"),
        "new_token": request.session.pop("new_token", None),
        "scopes": Scope.values,
        "models": models_visible_to(request.user).order_by("name").values_list("name", flat=True),
    }
    return render(request, "accounts/tokens.html", context)


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    try:
        token = services.token_revoke(user=request.user, token_id=token_id)
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Token {token.name} revoked.")
    return redirect("token-list")
