"""The friendly prediction endpoint: nested lists in, nested lists out."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import ERROR
from inference import predict
from registry import selectors
from registry.access import Action


class PredictRequestSerializer(serializers.Serializer):
    inputs = serializers.JSONField(help_text='{"<input name>": nested list}; one example may leave out the batch dim.')


class PredictResponseSerializer(serializers.Serializer):
    model = serializers.CharField()
    version = serializers.IntegerField()
    outputs = serializers.DictField(child=serializers.JSONField())
    labels = serializers.ListField(child=serializers.CharField(), required=False)
    timing = serializers.DictField(child=serializers.JSONField())


class PredictView(APIView):
    """POST /api/v1/models/{name}/predict/ — the same workers and checks as /v2, friendlier shapes."""

    required_scope = "predict"

    @extend_schema(
        summary="Predict with nested lists (the friendly alternative to /v2/.../infer)",
        parameters=[
            OpenApiParameter("name", str, OpenApiParameter.PATH, description="Model name."),
            OpenApiParameter("version", int, description="Pin a version number."),
            OpenApiParameter("alias", str, description="Use an alias (default: production)."),
        ],
        request=PredictRequestSerializer,
        responses={200: PredictResponseSerializer, 400: ERROR, 404: ERROR, 413: ERROR, 422: ERROR, 503: ERROR,
                   504: ERROR},
        examples=[OpenApiExample("iris", value={"inputs": {"features": [5.1, 3.5, 1.4, 0.2]}}, request_only=True)],
    )  # fmt: skip
    def post(self, request: Request, name: str) -> Response:
        version = selectors.version_resolve(
            request.user,
            name,
            version=request.query_params.get("version"),
            alias=request.query_params.get("alias"),
            action=Action.PREDICT,
        )
        predict.rate_limit(request.user)
        serializer = PredictRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tensors = predict.friendly_to_tensors(version, serializer.validated_data["inputs"])
        addressed = request.query_params.get("version") or request.query_params.get("alias")
        outputs, timing = predict.predict(version, tensors, addressed=addressed)
        body = {
            "model": version.model.name,
            "version": version.version,
            "outputs": {name: array.tolist() for name, array in outputs.items()},
            "timing": timing,
        }
        labels = predict.labels_for(version, outputs)
        if labels is not None:
            body["labels"] = labels
        return Response(body)
