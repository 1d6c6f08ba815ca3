"""REST endpoints of conversions: start one from a version, list, read, cancel; a version's lineage."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import ERROR
from core.parsers import LimitedJSONParser
from inference.conversions import recipes, services
from inference.models import ConversionRun
from registry import selectors

RUN_ID = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="Conversion id.")
MODEL_NAME = OpenApiParameter("name", OpenApiTypes.STR, OpenApiParameter.PATH, description="Model name.")
VERSION = OpenApiParameter("version", OpenApiTypes.INT, OpenApiParameter.PATH, description="Version number.")


class ConversionSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_name", read_only=True)
    version = serializers.IntegerField(source="version_number", read_only=True)
    child_version = serializers.IntegerField(
        source="child.version",
        read_only=True,
        allow_null=True,
        help_text="The converted version, once the conversion succeeded.",
    )
    progress = serializers.FloatField(read_only=True, help_text="Percentage of the recipe's steps done.")
    steps = serializers.SerializerMethodField(help_text="The recipe's steps, in order.")
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)
    result = serializers.JSONField(
        read_only=True,
        help_text=(
            "What the run measured: comparison (max_abs_diff, max_rel_diff, atol, rtol, within), latency_ms and "
            "memory_bytes of parent and child, sizes, sha256 of both, tool versions, exporter."
        ),
    )
    url = serializers.SerializerMethodField(help_text="The conversion's page in the browser.")

    class Meta:
        model = ConversionRun
        fields = [
            "id",
            "model",
            "version",
            "target",
            "options",
            "status",
            "progress",
            "rows_done",
            "total_rows",
            "steps",
            "child_version",
            "cancel_requested",
            "attempts",
            "error",
            "result",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "url",
        ]
        read_only_fields = fields

    def get_steps(self, obj: ConversionRun) -> list[str]:
        return list(recipes.STEPS.get(obj.target, ()))

    def get_url(self, obj: ConversionRun) -> str:
        return reverse("inference:conversion-detail", args=[obj.pk])


class ConversionStartSerializer(serializers.Serializer):
    target = serializers.CharField(max_length=32, help_text=f"One of {', '.join(recipes.TARGETS)}.")
    options = serializers.JSONField(required=False, help_text='e.g. {"opset": 18} or {"per_channel": true}.')


class LinkSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    format = serializers.CharField()
    status = serializers.CharField()
    derivation = serializers.CharField()
    recipe = serializers.DictField(child=serializers.CharField())
    conversion = serializers.CharField()


class LineageSerializer(serializers.Serializer):
    chain = LinkSerializer(many=True, help_text="From the root to this version, each with how it was derived.")
    children = LinkSerializer(many=True, help_text="Versions derived from this one.")


@extend_schema_view(
    list=extend_schema(summary="Conversions of models you may see, newest first"),
    retrieve=extend_schema(
        summary="Get a conversion with its progress and figures",
        parameters=[RUN_ID],
        responses={200: ConversionSerializer, 404: ERROR},
    ),
)
class ConversionViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = ConversionSerializer
    queryset = ConversionRun.objects.none()
    lookup_value_regex = r"[^/]+"

    def get_queryset(self) -> QuerySet[ConversionRun]:
        runs = services.conversions_visible_to(self.request.user)
        model = self.request.query_params.get("model")
        return runs.filter(model_name=model) if model else runs

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(ConversionSerializer(services.conversion_get(request.user, pk)).data)

    @extend_schema(
        summary="Cancel a conversion (a running one stops before its next step)",
        parameters=[RUN_ID],
        request=None,
        responses={200: ConversionSerializer, 403: ERROR, 404: ERROR, 409: ERROR},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        run = services.conversion_cancel(actor=request.user, run=services.conversion_get(request.user, pk))
        return Response(ConversionSerializer(run).data)


class VersionConversionsView(APIView):
    """A version's conversions: list them, or start one."""

    parser_classes = [LimitedJSONParser]

    @extend_schema(
        summary="Conversions of this version",
        parameters=[MODEL_NAME, VERSION],
        responses={200: ConversionSerializer(many=True), 404: ERROR},
    )
    def get(self, request: Request, name: str, version: int) -> Response:
        source = selectors.version_get(request.user, name, version)
        runs = services.conversions_visible_to(request.user).filter(version=source)
        return Response(ConversionSerializer(runs, many=True).data)

    @extend_schema(
        summary="Convert this version (onnx, onnx-int8, fp16); the result is a new version",
        parameters=[MODEL_NAME, VERSION],
        request=ConversionStartSerializer,
        responses={201: ConversionSerializer, **dict.fromkeys((400, 403, 404, 409, 503), ERROR)},
    )
    def post(self, request: Request, name: str, version: int) -> Response:
        source = selectors.version_get(request.user, name, version)
        serializer = ConversionStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        run = services.conversion_start(
            actor=request.user, version=source, target=data["target"], options=data.get("options")
        )
        return Response(ConversionSerializer(run).data, status=status.HTTP_201_CREATED)


class VersionLineageView(APIView):
    """Where a version came from (parent → child, with each recipe) and what was derived from it."""

    @extend_schema(
        summary="A version's lineage", parameters=[MODEL_NAME, VERSION], responses={200: LineageSerializer, 404: ERROR}
    )
    def get(self, request: Request, name: str, version: int) -> Response:
        return Response(services.version_lineage(selectors.version_get(request.user, name, version)))
