"""REST endpoints of monitoring: stats, evaluation datasets and runs, the promotion gate."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import ERROR
from core.errors import NotFound, PayloadTooLarge
from monitoring import datasets, services
from monitoring.api.serializers import (
    DatasetCreateSerializer,
    DatasetSerializer,
    GateSerializer,
    GateSetSerializer,
    RunCreateSerializer,
    RunSerializer,
)
from monitoring.models import PromotionGate
from registry import selectors
from registry.access import Action
from registry.api.base import ModelScopedMixin
from registry.uploads import FORM_OVERHEAD_BYTES

MODEL = OpenApiParameter("name", str, OpenApiParameter.PATH, description="Model name.")
VERSION = OpenApiParameter("version", int, OpenApiParameter.PATH, description="Version number.")
DATASET = OpenApiParameter("dataset", str, OpenApiParameter.PATH, description="Dataset name.")
RUN = OpenApiParameter("run_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="Evaluation run id.")
WINDOW = OpenApiParameter("window", str, enum=list(services.WINDOWS), description="hour (default), day or week.")
STATS = OpenApiResponse(response=OpenApiTypes.OBJECT, description="model_stats: one entry per version.")


class StatsView(ModelScopedMixin, APIView):
    """GET /api/v1/models/{name}/stats/ (and /versions/{n}/stats/): serving statistics, like Triton's."""

    @extend_schema(summary="Serving statistics of a model's versions over a window", parameters=[MODEL, WINDOW],
                   responses={200: STATS, 400: ERROR, 404: ERROR})  # fmt: skip
    def get(self, request: Request, name: str) -> Response:
        model = self.scoped_model()
        return Response(services.version_stats(model, services.window_parse(request.query_params.get("window"))))


class VersionStatsView(ModelScopedMixin, APIView):
    @extend_schema(summary="Serving statistics of one version over a window", parameters=[MODEL, VERSION, WINDOW],
                   responses={200: STATS, 400: ERROR, 404: ERROR})  # fmt: skip
    def get(self, request: Request, name: str, version: int) -> Response:
        model = self.scoped_model()
        window = services.window_parse(request.query_params.get("window"))
        return Response(services.version_stats(model, window, number=version))


class DatasetListView(ModelScopedMixin, APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(summary="A model's evaluation datasets", parameters=[MODEL],
                   responses={200: DatasetSerializer(many=True), 404: ERROR})  # fmt: skip
    def get(self, request: Request, name: str) -> Response:
        model = self.scoped_model()
        return Response(DatasetSerializer(model.eval_datasets.select_related("model", "created_by"), many=True).data)

    @extend_schema(
        summary="Upload labelled data (multipart), checked against the model's signature",
        parameters=[MODEL],
        request={"multipart/form-data": DatasetCreateSerializer},
        responses={201: DatasetSerializer, 400: ERROR, 403: ERROR, 404: ERROR, 409: ERROR, 413: ERROR},
    )
    def post(self, request: Request, name: str) -> Response:
        # Refuse an oversized body before parsing it into a temporary file.
        limit = datasets.dataset_limit()
        if int(request.headers.get("Content-Length") or 0) > limit + FORM_OVERHEAD_BYTES:
            raise PayloadTooLarge(f"The request is larger than the dataset limit of {limit} bytes.")
        model = self.scoped_model(Action.EVALUATE)
        serializer = DatasetCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        dataset = services.dataset_create(
            actor=request.user, model=model, name=data["name"], file=data["file"], filename=data["file"].name,
            description=data["description"], version=data.get("version"),
        )  # fmt: skip
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailView(ModelScopedMixin, APIView):
    @extend_schema(summary="Get a dataset", parameters=[MODEL, DATASET],
                   responses={200: DatasetSerializer, 404: ERROR})  # fmt: skip
    def get(self, request: Request, name: str, dataset: str) -> Response:
        model = self.scoped_model()
        return Response(DatasetSerializer(services.dataset_get(model, dataset)).data)

    @extend_schema(summary="Delete a dataset and its runs", parameters=[MODEL, DATASET],
                   responses={204: None, 403: ERROR, 404: ERROR, 409: ERROR})  # fmt: skip
    def delete(self, request: Request, name: str, dataset: str) -> Response:
        model = self.scoped_model(Action.EVALUATE)
        services.dataset_delete(actor=request.user, dataset=services.dataset_get(model, dataset))
        return Response(status=status.HTTP_204_NO_CONTENT)


class RunListView(APIView):
    parser_classes = [JSONParser, FormParser]

    @extend_schema(
        summary="Evaluation runs of models you can see, newest first",
        parameters=[OpenApiParameter("model", str, description="Runs of this model.")],
        responses={200: RunSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        runs = services.runs_visible_to(request.user)
        if request.query_params.get("model"):
            runs = runs.filter(version__model__name=request.query_params["model"])
        return Response(RunSerializer(runs[:200], many=True).data)

    @extend_schema(summary="Evaluate a ready version on a dataset (a job on a worker)", request=RunCreateSerializer,
                   responses={201: RunSerializer, 400: ERROR, 403: ERROR, 404: ERROR, 409: ERROR})  # fmt: skip
    def post(self, request: Request) -> Response:
        serializer = RunCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        version = selectors.version_get(request.user, data["model"], data["version"], action=Action.EVALUATE)
        dataset = services.dataset_get(version.model, data["dataset"])
        run = services.evaluation_start(
            actor=request.user, version=version, dataset=dataset, batch_size=data.get("batch_size")
        )
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)


class RunDetailView(APIView):
    @extend_schema(summary="An evaluation run with its progress and metrics", parameters=[RUN],
                   responses={200: RunSerializer, 404: ERROR})  # fmt: skip
    def get(self, request: Request, run_id: str) -> Response:
        return Response(RunSerializer(services.run_get(request.user, run_id)).data)


class GateView(ModelScopedMixin, APIView):
    parser_classes = [JSONParser, FormParser]

    def _gate(self, request: Request, name: str) -> PromotionGate:
        model = self.scoped_model()
        gate = PromotionGate.objects.select_related("dataset").filter(model=model).first()
        if gate is None:
            raise NotFound(f"Model {name!r} has no promotion gate.")
        return gate

    @extend_schema(
        summary="The model's promotion gate", parameters=[MODEL], responses={200: GateSerializer, 404: ERROR}
    )
    def get(self, request: Request, name: str) -> Response:
        return Response(GateSerializer(self._gate(request, name)).data)

    @extend_schema(
        summary="Require an evaluation before an alias moves",
        parameters=[MODEL],
        request=GateSetSerializer,
        responses={200: GateSerializer, 400: ERROR, 403: ERROR, 404: ERROR},
    )
    def put(self, request: Request, name: str) -> Response:
        model = self.scoped_model(Action.MANAGE)
        serializer = GateSetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        dataset = services.dataset_get(model, data.pop("dataset"))
        gate = services.gate_set(actor=request.user, model=model, dataset=dataset, **data)
        return Response(GateSerializer(gate).data)

    @extend_schema(
        summary="Remove the promotion gate", parameters=[MODEL], responses={204: None, 403: ERROR, 404: ERROR}
    )
    def delete(self, request: Request, name: str) -> Response:
        model = self.scoped_model(Action.MANAGE)
        services.gate_delete(actor=request.user, model=model)
        return Response(status=status.HTTP_204_NO_CONTENT)


USAGE_PARAMETERS = [
    WINDOW,
    OpenApiParameter("model", str, description="Only this model (by name)."),
    OpenApiParameter("token", int, description="Only this API token (its id, as GET /api/v1/tokens/ lists it)."),
]
USAGE = OpenApiResponse(
    response=OpenApiTypes.OBJECT,
    description="totals, by_version [{model, version, requests, prompt_tokens, completion_tokens, total_tokens}] "
    "and by_caller [{user, token_id, token, ...the same sums}].",
)


def _usage_filters(request: Request) -> tuple[str, str | None, int | None]:
    query = request.query_params
    return (services.window_parse(query.get("window")), query.get("model") or None,
            services.token_filter_parse(query.get("token")))  # fmt: skip


class UsageView(APIView):
    """GET /api/v1/usage/: model tokens used per model version and per caller, for chargeback."""

    @extend_schema(
        summary="Token usage over a window (staff: everyone's; others: their own)",
        parameters=USAGE_PARAMETERS,
        responses={200: USAGE, 400: ERROR},
    )
    def get(self, request: Request) -> Response:
        window, model, token = _usage_filters(request)
        return Response(services.usage_summary(request.user, window, model=model, token=token))


class UsageCsvView(APIView):
    """GET /api/v1/usage/csv/: the same usage, one CSV line per minute, model version and caller."""

    @extend_schema(
        summary="Token usage as CSV (per minute, model version and caller)",
        parameters=USAGE_PARAMETERS,
        responses={(200, "text/csv"): OpenApiTypes.STR, 400: ERROR},
    )
    def get(self, request: Request) -> HttpResponse:
        window, model, token = _usage_filters(request)
        response = HttpResponse(
            services.usage_csv(request.user, window, model=model, token=token), content_type="text/csv"
        )
        response["Content-Disposition"] = f'attachment; filename="usage-{window}.csv"'
        return response
