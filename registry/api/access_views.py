"""REST endpoints of access control: roles, protected aliases, promotion requests, audit reads."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.http import HttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import ERROR
from core.errors import InvalidInput
from registry import audit, selectors, services
from registry.access import Action
from registry.api.base import ModelScopedMixin
from registry.api.filters import AuditEventFilter
from registry.api.serializers import AuditEventSerializer
from registry.roles import ModelRole, PromotionRequest, ProtectedAlias, Role

MODEL_NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, description="Model name.")
ALIAS = OpenApiParameter("alias", str, OpenApiParameter.PATH, description="Alias name.")
ID = OpenApiParameter("pk", int, OpenApiParameter.PATH, description="Id.")


class RoleSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True, allow_null=True, default=None)
    group = serializers.CharField(source="group.name", read_only=True, allow_null=True, default=None)

    class Meta:
        model = ModelRole
        fields = ["id", "username", "group", "role", "can_promote", "created_at"]
        read_only_fields = fields


class RoleGrantSerializer(serializers.Serializer):
    username = serializers.CharField(required=False, max_length=150)
    group = serializers.CharField(required=False, max_length=150)
    role = serializers.ChoiceField(choices=Role.choices)
    can_promote = serializers.BooleanField(required=False, default=False)


class ProtectedAliasSerializer(serializers.ModelSerializer):
    class Meta:
        model = ProtectedAlias
        fields = ["name", "require_approval", "created_at"]
        read_only_fields = fields


class ProtectSerializer(serializers.Serializer):
    protected = serializers.BooleanField(default=True)
    require_approval = serializers.BooleanField(default=False)


class PromotionRequestSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.version", read_only=True)
    requested_by = serializers.CharField(source="requested_by.username", read_only=True, allow_null=True)
    decided_by = serializers.CharField(source="decided_by.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = PromotionRequest
        fields = [
            *("id", "alias", "version", "status", "comment", "requested_by", "decided_by", "decision_comment"),
            *("created_at", "decided_at"),
        ]
        read_only_fields = fields


class PromotionRequestCreateSerializer(serializers.Serializer):
    alias = serializers.CharField(max_length=32)
    version = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class DecisionSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


class AliasAtSerializer(serializers.Serializer):
    alias = serializers.CharField()
    time = serializers.DateTimeField()
    version = serializers.IntegerField(allow_null=True)
    event = AuditEventSerializer(allow_null=True)


class RoleListView(ModelScopedMixin, APIView):
    required_scope = {"GET": "read", "POST": "admin"}

    @extend_schema(
        summary="Roles granted on a model",
        parameters=[MODEL_NAME],
        responses={200: RoleSerializer(many=True), 404: ERROR},
    )
    def get(self, request: Request, name: str) -> Response:
        model = self.scoped_model()
        return Response(RoleSerializer(services.roles_of(model), many=True).data)

    @extend_schema(
        summary="Grant a user or group a role (owners)",
        parameters=[MODEL_NAME],
        request=RoleGrantSerializer,
        responses={201: RoleSerializer, 400: ERROR, 403: ERROR, 404: ERROR},
    )
    def post(self, request: Request, name: str) -> Response:
        model = self.scoped_model(Action.MANAGE)
        serializer = RoleGrantSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        grant = services.role_grant(actor=request.user, model=model, **serializer.validated_data)
        return Response(RoleSerializer(grant).data, status=status.HTTP_201_CREATED)


class RoleDetailView(ModelScopedMixin, APIView):
    required_scope = "admin"

    @extend_schema(summary="Remove a role (owners)", parameters=[MODEL_NAME, ID], responses={204: None, 404: ERROR})
    def delete(self, request: Request, name: str, pk: int) -> Response:
        model = self.scoped_model(Action.MANAGE)
        services.role_revoke(actor=request.user, model=model, role_id=pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProtectedAliasListView(ModelScopedMixin, APIView):
    @extend_schema(
        summary="Aliases marked protected (production always is)",
        parameters=[MODEL_NAME],
        responses={200: ProtectedAliasSerializer(many=True), 404: ERROR},
    )
    def get(self, request: Request, name: str) -> Response:
        model = self.scoped_model()
        return Response(ProtectedAliasSerializer(model.protected_aliases.all(), many=True).data)


class ProtectedAliasView(ModelScopedMixin, APIView):
    required_scope = "admin"

    @extend_schema(
        summary="Protect an alias, optionally requiring approval; or unprotect it (owners)",
        parameters=[MODEL_NAME, ALIAS],
        request=ProtectSerializer,
        responses={200: ProtectSerializer, 400: ERROR, 403: ERROR, 404: ERROR},
    )
    def put(self, request: Request, name: str, alias: str) -> Response:
        model = self.scoped_model(Action.MANAGE)
        serializer = ProtectSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.alias_protect(actor=request.user, model=model, name=alias, **serializer.validated_data)
        protected, needs_approval = services.alias_protection(model, alias)
        return Response({"protected": protected, "require_approval": needs_approval})


class PromotionRequestListView(ModelScopedMixin, APIView):
    @extend_schema(
        summary="Requests to move protected aliases, newest first",
        parameters=[MODEL_NAME],
        responses={200: PromotionRequestSerializer(many=True), 404: ERROR},
    )
    def get(self, request: Request, name: str) -> Response:
        model = self.scoped_model()
        requests = model.promotion_requests.select_related("version", "requested_by", "decided_by")[:200]
        return Response(PromotionRequestSerializer(requests, many=True).data)

    @extend_schema(
        summary="Request a protected alias move (approved by another person)",
        parameters=[MODEL_NAME],
        request=PromotionRequestCreateSerializer,
        responses={201: PromotionRequestSerializer, 400: ERROR, 403: ERROR, 404: ERROR, 409: ERROR},
    )
    def post(self, request: Request, name: str) -> Response:
        model = self.scoped_model(Action.PROMOTE)
        serializer = PromotionRequestCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        created = services.promotion_request_create(
            actor=request.user,
            model=model,
            alias=data["alias"],
            version_number=data["version"],
            comment=data["comment"],
        )
        return Response(PromotionRequestSerializer(created).data, status=status.HTTP_201_CREATED)


class PromotionDecisionView(ModelScopedMixin, APIView):
    approve = True

    @extend_schema(
        parameters=[MODEL_NAME, ID],
        request=DecisionSerializer,
        responses={200: PromotionRequestSerializer, 403: ERROR, 404: ERROR, 409: ERROR},
    )
    def post(self, request: Request, name: str, pk: int) -> Response:
        model = self.scoped_model(Action.PROMOTE)
        serializer = DecisionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        decided = services.promotion_request_decide(
            actor=request.user,
            model=model,
            request_id=pk,
            approve=self.approve,
            comment=serializer.validated_data["comment"],
        )
        return Response(PromotionRequestSerializer(decided).data)


@extend_schema(summary="Approve a promotion request (not your own); moves the alias")
class PromotionApproveView(PromotionDecisionView):
    approve = True


@extend_schema(summary="Reject a promotion request (not your own)")
class PromotionRejectView(PromotionDecisionView):
    approve = False


def _time_param(raw: str | None) -> dt.datetime:
    parsed = parse_datetime(raw or "")
    if parsed is None:
        raise InvalidInput("time must be an ISO 8601 date-time, e.g. 2026-12-01T12:00:00Z.", field="time")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


class AliasAtView(ModelScopedMixin, APIView):
    @extend_schema(
        summary="Which version the alias pointed at, at a given time (from the audit trail)",
        parameters=[MODEL_NAME, ALIAS, OpenApiParameter("time", OpenApiTypes.DATETIME, required=True)],
        responses={200: AliasAtSerializer, 400: ERROR, 404: ERROR},
    )
    def get(self, request: Request, name: str, alias: str) -> Response:
        model = self.scoped_model()
        when = _time_param(request.query_params.get("time"))
        version, event = audit.alias_version_at(model, alias, when)
        body: dict[str, Any] = {
            "alias": alias,
            "time": when.isoformat(),
            "version": version,
            "event": AuditEventSerializer(event).data if event is not None else None,
        }
        return Response(body)


class AuditExportView(APIView):
    @extend_schema(
        summary="Export audit events you can see as CSV or JSON (same filters as the list)",
        parameters=[
            OpenApiParameter("export", str, enum=["csv", "json"], description="File format; default csv."),
            *(OpenApiParameter(field, str) for field in ("model", "action", "actor", "object_type")),
            OpenApiParameter("since", OpenApiTypes.DATETIME),
            OpenApiParameter("until", OpenApiTypes.DATETIME),
        ],
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, "application/json"): OpenApiTypes.OBJECT, 400: ERROR},
    )
    def get(self, request: Request) -> HttpResponse:
        # Not "format": that is DRF's own renderer switch.
        fmt = request.query_params.get("export") or "csv"
        filtered = AuditEventFilter(request.query_params, queryset=selectors.audit_events_visible_to(request.user))
        if not filtered.is_valid():
            raise InvalidInput("; ".join(f"{k}: {' '.join(v)}" for k, v in filtered.errors.items()))
        content, content_type = audit.audit_export(filtered.qs, fmt)
        response = HttpResponse(content, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="audit-events.{fmt}"'
        return response
