"""REST endpoints of the registry: declarations that call selectors and services."""

from __future__ import annotations

from collections.abc import Callable

from django.db import transaction
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
from core.parsers import LimitedJSONParser
from registry import selectors, services
from registry.access import Action
from registry.api.base import ModelScopedMixin
from registry.api.filters import AuditEventFilter, ModelFilter
from registry.api.idempotency import Remember, idempotent
from registry.api.serializers import (
    AliasSerializer,
    AliasSetSerializer,
    AuditEventSerializer,
    ModelSerializer,
    ModelUpdateSerializer,
    VersionSerializer,
    VersionUpdateSerializer,
    VersionUploadSerializer,
)
from registry.artifacts import artifact_extension, artifact_stem
from registry.models import AuditEvent, ModelAlias, ModelVersion, RegisteredModel

MODEL_NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, description="Model name.")
FORCE = OpenApiParameter(
    "force",
    bool,
    OpenApiParameter.QUERY,
    required=False,
    description="Also remove the aliases the version holds (else 409 naming them); audited.",
)
MODEL_FORCE = OpenApiParameter(
    "force",
    bool,
    OpenApiParameter.QUERY,
    required=False,
    description="Also remove the model's aliases (else 409 naming them); audited.",
)
FORCE_TRUE = ("1", "true", "yes", "on")
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="A key of your choice (a UUID): a retry with the same key and request answers the first result "
    "instead of creating again; the same key with another request is 422. Remembered for 24 hours.",
)


def force_flag(request: Request) -> bool:
    """`force` from the query string or a JSON/form body: true, 1, yes or on."""
    raw = request.query_params.get("force")
    if raw is None and hasattr(request.data, "get"):
        raw = request.data.get("force")
    return raw is True or str(raw).strip().lower() in FORCE_TRUE


@extend_schema_view(
    list=extend_schema(summary="List the models you can see"),
    create=extend_schema(
        summary="Register a model",
        parameters=[IDEMPOTENCY_KEY],
        responses={201: ModelSerializer, 400: ERROR, 409: ERROR, 422: ERROR},
    ),
    retrieve=extend_schema(summary="Get a model", responses={200: ModelSerializer, 404: ERROR}),
    partial_update=extend_schema(
        summary="Change description, tags or visibility",
        request=ModelUpdateSerializer,
        responses={200: ModelSerializer, 404: ERROR},
    ),
    destroy=extend_schema(
        summary="Delete a model, its versions and artifacts (refused while it serves under an alias, unless forced)",
        parameters=[MODEL_FORCE],
        responses={204: None, 404: ERROR, 409: ERROR},
    ),
)
class ModelViewSet(ModelScopedMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = ModelSerializer
    filterset_class = ModelFilter
    lookup_field = "name"
    lookup_value_regex = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
    queryset = RegisteredModel.objects.none()

    def get_queryset(self) -> QuerySet[RegisteredModel]:
        return (
            selectors.models_visible_to(self.request.user)
            .select_related("owner")
            .prefetch_related("tags", "aliases__version")
            .distinct()
        )

    def create(self, request: Request) -> Response:
        serializer = ModelSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)

        def create(remember: Remember) -> Response:
            with transaction.atomic():
                model = services.model_create(actor=request.user, **serializer.validated_data)
                body = ModelSerializer(model).data
                remember(status.HTTP_201_CREATED, body)
            return Response(body, status=status.HTTP_201_CREATED)

        return idempotent(request, create)

    def retrieve(self, request: Request, name: str) -> Response:
        return Response(ModelSerializer(self.scoped_model()).data)

    def partial_update(self, request: Request, name: str) -> Response:
        model = self.scoped_model(Action.MANAGE)
        serializer = ModelUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.model_update(actor=request.user, model=model, **serializer.validated_data)
        return Response(ModelSerializer(model).data)

    def destroy(self, request: Request, name: str) -> Response:
        model = self.scoped_model(Action.DELETE)
        services.model_delete(actor=request.user, model=model, force=force_flag(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


VERSION = OpenApiParameter("version", int, OpenApiParameter.PATH, description="Version number.")


@extend_schema_view(
    list=extend_schema(summary="List a model's versions", parameters=[MODEL_NAME]),
    retrieve=extend_schema(
        summary="Get a version", parameters=[MODEL_NAME, VERSION], responses={200: VersionSerializer, 404: ERROR}
    ),
    partial_update=extend_schema(
        summary="Change a version's description or tags",
        parameters=[MODEL_NAME, VERSION],
        request=VersionUpdateSerializer,
        responses={200: VersionSerializer, 404: ERROR},
    ),
    destroy=extend_schema(
        summary="Delete a version and its artifact",
        parameters=[MODEL_NAME, VERSION, FORCE],
        responses={204: None, 404: ERROR, 409: ERROR},
    ),
)
class VersionViewSet(ModelScopedMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = VersionSerializer
    lookup_field = "version"
    lookup_value_regex = r"[0-9]+"
    queryset = ModelVersion.objects.none()
    parser_classes = [LimitedJSONParser, MultiPartParser, FormParser]

    def get_queryset(self) -> QuerySet[ModelVersion]:
        model = self.scoped_model()
        return model.versions.select_related("model", "created_by", "parent").prefetch_related("tags", "aliases")

    @extend_schema(
        summary="Upload a new version (multipart)",
        parameters=[MODEL_NAME, IDEMPOTENCY_KEY],
        request={"multipart/form-data": VersionUploadSerializer},
        responses={
            201: VersionSerializer,
            **dict.fromkeys((400, 403, 404, 409, 413, 422, 503, 507), ERROR),
        },
    )
    def create(self, request: Request, name: str) -> Response:
        model = self.scoped_model(Action.UPLOAD)
        serializer = VersionUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        upload = data.pop("file")

        def create(remember: Remember) -> Response:
            version = services.version_upload(
                actor=request.user,
                model=model,
                file=upload,
                filename=upload.name,
                parent_version=data.pop("parent", None),
                on_created=lambda created: remember(status.HTTP_201_CREATED, VersionSerializer(created).data),
                **data,
            )
            return Response(VersionSerializer(version).data, status=status.HTTP_201_CREATED)

        return idempotent(request, create)

    def retrieve(self, request: Request, name: str, version: str) -> Response:
        return Response(VersionSerializer(selectors.version_get(request.user, name, version)).data)

    def partial_update(self, request: Request, name: str, version: str) -> Response:
        obj = selectors.version_get(request.user, name, version, for_change=True)
        serializer = VersionUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        services.version_update(actor=request.user, version=obj, **serializer.validated_data)
        return Response(VersionSerializer(obj).data)

    def destroy(self, request: Request, name: str, version: str) -> Response:
        services.version_delete(
            actor=request.user,
            version=selectors.version_get(request.user, name, version, action=Action.DELETE),
            force=force_flag(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _change(self, request: Request, name: str, version: str, service: Callable[..., ModelVersion]) -> Response:
        """Apply a state-changing service to a version the caller may change."""
        obj = selectors.version_get(request.user, name, version, for_change=True)
        return Response(VersionSerializer(service(actor=request.user, version=obj)).data)

    @extend_schema(
        summary="Archive a version (refused while it holds an alias, unless forced)",
        parameters=[MODEL_NAME, VERSION, FORCE],
        request=None,
        responses={200: VersionSerializer, 404: ERROR, 409: ERROR},
    )
    @action(detail=True, methods=["post"])
    def archive(self, request: Request, name: str, version: str) -> Response:
        obj = selectors.version_get(request.user, name, version, for_change=True)
        archived = services.version_archive(actor=request.user, version=obj, force=force_flag(request))
        return Response(VersionSerializer(archived).data)

    @extend_schema(
        summary="Restore an archived version (validated again)",
        parameters=[MODEL_NAME, VERSION],
        request=None,
        responses={200: VersionSerializer, 404: ERROR, 409: ERROR},
    )
    @action(detail=True, methods=["post"])
    def restore(self, request: Request, name: str, version: str) -> Response:
        return self._change(request, name, version, services.version_restore)

    @extend_schema(
        summary="Validate a failed version again",
        parameters=[MODEL_NAME, VERSION],
        request=None,
        responses={200: VersionSerializer, 404: ERROR, 409: ERROR},
    )
    @action(detail=True, methods=["post"])
    def validate(self, request: Request, name: str, version: str) -> Response:
        return self._change(request, name, version, services.version_revalidate)

    @extend_schema(
        summary="Download the artifact",
        parameters=[MODEL_NAME, VERSION],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 404: ERROR, 409: ERROR, 503: ERROR},
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, name: str, version: str) -> FileResponse:
        obj = selectors.version_get(request.user, name, version, action=Action.DOWNLOAD)
        stem = artifact_stem(obj.original_filename) or obj.model.name
        response = FileResponse(
            services.version_download(actor=request.user, version=obj),
            as_attachment=True,
            filename=f"{stem}-v{obj.version}{artifact_extension(obj.format, obj.artifact)}",
            content_type="application/octet-stream",
        )
        response["X-Checksum-SHA256"] = obj.sha256
        return response


ALIAS = OpenApiParameter("alias", str, OpenApiParameter.PATH, description="Alias name, e.g. production.")


@extend_schema_view(
    list=extend_schema(summary="List a model's aliases", parameters=[MODEL_NAME]),
)
class AliasViewSet(ModelScopedMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = AliasSerializer
    lookup_field = "alias"
    lookup_value_regex = r"[a-z][a-z0-9_-]*"
    queryset = ModelAlias.objects.none()
    pagination_class = None

    def get_queryset(self) -> QuerySet[ModelAlias]:
        model = self.scoped_model()
        return model.aliases.select_related("version", "updated_by")

    @extend_schema(summary="Get an alias", parameters=[MODEL_NAME, ALIAS], responses={200: AliasSerializer, 404: ERROR})
    def retrieve(self, request: Request, name: str, alias: str) -> Response:
        model = self.scoped_model()
        return Response(AliasSerializer(selectors.alias_get(model, alias)).data)

    @extend_schema(
        summary="Set or move an alias to a ready version",
        parameters=[MODEL_NAME, ALIAS],
        request=AliasSetSerializer,
        responses={200: AliasSerializer, 400: ERROR, 404: ERROR, 409: ERROR},
    )
    def update(self, request: Request, name: str, alias: str) -> Response:
        model = self.scoped_model(Action.MOVE_ALIAS)
        serializer = AliasSetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        obj = services.alias_set(
            actor=request.user,
            model=model,
            name=alias,
            version_number=serializer.validated_data["version"],
            force=serializer.validated_data["force"],
        )
        return Response(AliasSerializer(obj).data)

    @extend_schema(summary="Delete an alias", parameters=[MODEL_NAME, ALIAS], responses={204: None, 404: ERROR})
    def destroy(self, request: Request, name: str, alias: str) -> Response:
        services.alias_delete(actor=request.user, model=self.scoped_model(Action.MOVE_ALIAS), name=alias)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Move the alias back to its previous version",
        parameters=[MODEL_NAME, ALIAS],
        request=None,
        responses={200: AliasSerializer, 404: ERROR, 409: ERROR},
    )
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, name: str, alias: str) -> Response:
        model = self.scoped_model(Action.MOVE_ALIAS)
        return Response(AliasSerializer(services.alias_rollback(actor=request.user, model=model, name=alias)).data)

    @extend_schema(
        summary="Moves of this alias, newest first",
        parameters=[MODEL_NAME, ALIAS],
        responses={200: AuditEventSerializer(many=True), 404: ERROR},
    )
    @action(detail=True, methods=["get"])
    def history(self, request: Request, name: str, alias: str) -> Response:
        model = self.scoped_model()
        return Response(AuditEventSerializer(selectors.alias_history(model, alias)[:500], many=True).data)


@extend_schema_view(list=extend_schema(summary="Audit events about models you can see"))
class AuditEventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    queryset = AuditEvent.objects.none()

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return selectors.audit_events_visible_to(self.request.user)
