"""REST endpoints of batch prediction jobs: declarations that call the jobs services."""

from __future__ import annotations

import django_filters
from django.conf import settings
from django.db.models import QuerySet
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import ERROR
from core.errors import PayloadTooLarge
from inference import jobs
from inference.api.serializers import BatchJobCreateSerializer, BatchJobSerializer
from inference.models import BatchJob, DataFormat, JobStatus
from registry.uploads import FORM_OVERHEAD_BYTES

JOB_ID = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="Job id.")
CONTENT_TYPES = {DataFormat.NPZ: "application/octet-stream", DataFormat.JSONL: "application/jsonl"}


class BatchJobFilter(django_filters.FilterSet):
    model = django_filters.CharFilter(field_name="model_name", help_text="Jobs of this model.")
    status = django_filters.ChoiceFilter(choices=JobStatus.choices)

    class Meta:
        model = BatchJob
        fields = ["model", "status"]


@extend_schema_view(
    list=extend_schema(summary="Your batch jobs (staff: everyone's), newest first"),
    retrieve=extend_schema(
        summary="Get a job with its progress", parameters=[JOB_ID], responses={200: BatchJobSerializer, 404: ERROR}
    ),
    destroy=extend_schema(
        summary="Delete a job that is not running, with its files",
        parameters=[JOB_ID],
        responses={204: None, 404: ERROR, 409: ERROR},
    ),
)
class BatchJobViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = BatchJobSerializer
    filterset_class = BatchJobFilter
    required_scope = {"POST": "predict"}
    queryset = BatchJob.objects.none()
    parser_classes = [MultiPartParser, FormParser]
    # Anything up to the next slash: a malformed id gets the JSON 404 of job_get.
    lookup_value_regex = r"[^/]+"

    def get_queryset(self) -> QuerySet[BatchJob]:
        return jobs.jobs_visible_to(self.request.user)

    @extend_schema(
        summary="Submit a file of inputs as a batch job (multipart)",
        request={"multipart/form-data": BatchJobCreateSerializer},
        responses={201: BatchJobSerializer, 400: ERROR, 404: ERROR, 409: ERROR, 413: ERROR},
    )
    def create(self, request: Request) -> Response:
        # Refuse an oversized body before parsing it into a temporary file.
        length = int(request.headers.get("Content-Length") or 0)
        if length > settings.BATCH_INPUT_MAX_BYTES + FORM_OVERHEAD_BYTES:
            raise PayloadTooLarge("The request is larger than the batch input limit (BATCH_INPUT_MAX_BYTES).")
        serializer = BatchJobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        job = jobs.job_submit(
            actor=request.user,
            model_name=data["model"],
            file=data["file"],
            filename=data["file"].name,
            version=data.get("version"),
            alias=data.get("alias"),
            result_format=data.get("result_format"),
            chunk_size=data.get("chunk_size"),
            max_tokens=data.get("max_tokens"),
            temperature=data.get("temperature"),
        )
        return Response(BatchJobSerializer(job).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(BatchJobSerializer(jobs.job_get(request.user, pk)).data)

    def destroy(self, request: Request, pk: str) -> Response:
        jobs.job_delete(actor=request.user, job=jobs.job_get(request.user, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Cancel a job (a running one stops between chunks)",
        parameters=[JOB_ID],
        request=None,
        responses={200: BatchJobSerializer, 404: ERROR, 409: ERROR},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        job = jobs.job_cancel(actor=request.user, job=jobs.job_get(request.user, pk))
        return Response(BatchJobSerializer(job).data)

    @extend_schema(
        summary="Download the result (.npz or JSON lines)",
        parameters=[JOB_ID],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            (200, "application/jsonl"): OpenApiTypes.BINARY,
            404: ERROR,
            409: ERROR,
        },
    )
    @action(detail=True, methods=["get"])
    def result(self, request: Request, pk: str) -> FileResponse:
        job = jobs.job_get(request.user, pk)
        stream = jobs.job_result_open(job)
        return FileResponse(
            stream,
            as_attachment=True,
            filename=f"{job.model_name}-v{job.version_number}-{job.short_id}-result.{job.result_format}",
            content_type=CONTENT_TYPES[DataFormat(job.result_format)],
        )
