"""The friendly prediction endpoint: nested lists (tensor models) or texts (text models) in, natural shapes out."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import ERROR
from inference import predict, text
from registry import selectors
from registry.access import Action


class ParsedJSONField(serializers.JSONField):
    """A value the request's parser produced, taken as is: DRF's JSONField would serialise it
    again only to check that it can be (4.7 ms for one 3x64x64 image)."""

    def to_internal_value(self, data: Any) -> Any:
        return data


class PredictRequestSerializer(serializers.Serializer):
    inputs = ParsedJSONField(
        help_text='Tensor models: {"<input name>": nested list}; one example may leave out the batch dim. '
        'Text models: a text ("Paris is the [MASK] of France.") or a list of texts.'
    )
    parameters = ParsedJSONField(
        required=False,
        help_text="Text models only: per-task settings, checked against the task: top_k (fill-mask, "
        "text-classification; 1 to 100), truncate (all tasks; false refuses a text over the model's maximum "
        "length), normalize (feature-extraction: unit-length embeddings).",
    )


class PredictResponseSerializer(serializers.Serializer):
    model = serializers.CharField()
    version = serializers.IntegerField()
    outputs = serializers.JSONField(
        help_text="Tensor models: {output name: nested list}. Text models: the task's natural answer for the text "
        "sent (a list of them for a list of texts): fill-mask [{token_str, score, token, sequence}], "
        "text-classification [{label, score}] (top_k, default 1), token-classification "
        "[{entity, score, word, start, end}], feature-extraction [floats]."
    )
    labels = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="Tensor models with class names: the argmax's."
    )
    timing = serializers.DictField(child=serializers.JSONField())
    usage = serializers.DictField(
        child=serializers.IntegerField(), required=False, help_text="Text models: {tokens: tokens the model read}."
    )


TIMING = {"total_ms": 4.1, "queue_ms": 0.3, "compute_ms": 2.9, "worker": "celery@gpu-1"}
EXAMPLES = [
    OpenApiExample("tensors (iris)", value={"inputs": {"features": [5.1, 3.5, 1.4, 0.2]}}, request_only=True),
    OpenApiExample(
        "fill-mask", value={"inputs": "Paris is the [MASK] of France.", "parameters": {"top_k": 2}}, request_only=True
    ),
    OpenApiExample(
        "fill-mask answer",
        value={
            "model": "bert-mini",
            "version": 1,
            "timing": TIMING,
            "usage": {"tokens": 9},
            "outputs": [
                {"token_str": "capital", "score": 0.91, "token": 3007, "sequence": "Paris is the capital of France."},
                {"token_str": "heart", "score": 0.02, "token": 2540, "sequence": "Paris is the heart of France."},
            ],
        },
        response_only=True,
    ),
    OpenApiExample(
        "text classification",
        value={"inputs": ["What a lovely day", "This is awful"], "parameters": {"top_k": 2}},
        request_only=True,
    ),
    OpenApiExample(
        "text classification answer",
        value={
            "model": "sentiment",
            "version": 3,
            "timing": TIMING,
            "usage": {"tokens": 11},
            "outputs": [
                [{"label": "positive", "score": 0.97}, {"label": "negative", "score": 0.03}],
                [{"label": "negative", "score": 0.88}, {"label": "positive", "score": 0.12}],
            ],
        },
        response_only=True,
    ),
    OpenApiExample("token classification", value={"inputs": "Ada Lovelace lived in London"}, request_only=True),
    OpenApiExample(
        "token classification answer",
        value={
            "model": "ner",
            "version": 1,
            "timing": TIMING,
            "usage": {"tokens": 8},
            "outputs": [
                {"entity": "B-PER", "score": 0.99, "word": "ada", "start": 0, "end": 3},
                {"entity": "B-LOC", "score": 0.98, "word": "london", "start": 22, "end": 28},
            ],
        },
        response_only=True,
    ),
    OpenApiExample(
        "embeddings",
        value={"inputs": ["a sentence", "another one"], "parameters": {"normalize": True}},
        request_only=True,
    ),
    OpenApiExample(
        "embeddings answer",
        value={
            "model": "minilm",
            "version": 1,
            "timing": TIMING,
            "usage": {"tokens": 9},
            "outputs": [[0.012, -0.081, 0.044], [0.031, -0.017, 0.102]],
        },
        response_only=True,
    ),
]


class PredictView(APIView):
    """POST /api/v1/models/{name}/predict/ — the same workers and checks as /v2, friendlier shapes."""

    required_scope = "predict"

    @extend_schema(
        summary="Predict with nested lists or texts (the friendly alternative to /v2/.../infer)",
        description="Tensor models take nested lists per input and answer nested lists per output. Hugging Face "
        "text models take a text or a list of texts (at most INFERENCE_TEXT_MAX_ITEMS, none empty) and optional "
        "`parameters`, and answer in their task's natural shape, with `usage.tokens`.",
        parameters=[
            OpenApiParameter("name", str, OpenApiParameter.PATH, description="Model name."),
            OpenApiParameter("version", int, description="Pin a version number."),
            OpenApiParameter("alias", str, description="Use an alias (default: production)."),
        ],
        request=PredictRequestSerializer,
        responses={200: PredictResponseSerializer, 400: ERROR, 404: ERROR, 413: ERROR, 422: ERROR, 429: ERROR,
                   503: ERROR, 504: ERROR},
        examples=EXAMPLES,
    )  # fmt: skip
    def post(self, request: Request, name: str) -> Response:
        version = selectors.version_resolve(
            request.user,
            name,
            version=request.query_params.get("version"),
            alias=request.query_params.get("alias"),
            action=Action.PREDICT,
        )
        # A generative model answers on /v1 only: refused before it counts against any limit.
        text.not_generative(version.task, version.model.name, version.version)
        predict.rate_limit(request.user)
        serializer = PredictRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        addressed = request.query_params.get("version") or request.query_params.get("alias")
        if version.task:
            answer = predict.text_predict(
                version, data["inputs"], data.get("parameters"), addressed=addressed, user=request.user
            )
            return Response({"model": version.model.name, "version": version.version, **answer})
        tensors = predict.friendly_to_tensors(version.signature, data["inputs"])
        outputs, timing = predict.predict(version, tensors, addressed=addressed, user=request.user)
        return Response(predict.tensor_answer(
            version.model.name, version.version, version.signature, version.labels, outputs, timing
        ))  # fmt: skip
