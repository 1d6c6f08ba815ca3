"""Query filters of the registry API."""

from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet

from registry.models import AuditEvent, RegisteredModel, Visibility


class ModelFilter(django_filters.FilterSet):
    search = django_filters.CharFilter(method="filter_search", help_text="Words in the name or description.")
    tag = django_filters.CharFilter(field_name="tags__name", help_text="Models carrying this tag.")
    alias = django_filters.CharFilter(field_name="aliases__name", help_text="Models that have this alias set.")
    owner = django_filters.CharFilter(field_name="owner__username")
    visibility = django_filters.ChoiceFilter(choices=Visibility.choices)

    class Meta:
        model = RegisteredModel
        fields = ["search", "tag", "alias", "owner", "visibility"]

    def filter_search(self, queryset: QuerySet[RegisteredModel], name: str, value: str) -> QuerySet[RegisteredModel]:
        for word in value.split():
            queryset = queryset.filter(Q(name__icontains=word) | Q(description__icontains=word))
        return queryset


class AuditEventFilter(django_filters.FilterSet):
    model = django_filters.CharFilter(field_name="model_name")
    action = django_filters.CharFilter(field_name="action")
    actor = django_filters.CharFilter(field_name="actor_name")
    object_type = django_filters.CharFilter(field_name="object_type")
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["model", "action", "actor", "object_type", "since", "until"]
