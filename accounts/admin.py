"""Admin for API tokens: list, search, revoke; secrets are never visible."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import ApiToken
from accounts.services import token_revoke


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = [
        *("name", "user", "prefix", "scopes", "rate_limit_per_minute", "tokens_per_minute"),
        *("created_at", "expires_at", "last_used_at", "revoked_at"),
    ]
    list_filter = ["revoked_at", "created_at"]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = ["user", "name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"]
    fields = [*readonly_fields, "expires_at", "rate_limit_per_minute", "tokens_per_minute", "allowed_models"]
    filter_horizontal = ["allowed_models"]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Tokens are created by their owner, who is the only one to see the secret.
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        # Through the service: audited, and confirmed by every gateway before this returns.
        active = list(queryset.filter(revoked_at__isnull=True).values_list("pk", flat=True))
        for token_id in active:
            token_revoke(user=None, token_id=token_id, actor=request.user)
        self.message_user(request, f"Revoked {len(active)} token(s).", messages.SUCCESS)
