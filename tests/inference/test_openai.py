"""The OpenAI-compatible API's shaping (pure functions) and its ASGI app over a fake gateway."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import AnonymousUser

from core.errors import InvalidInput, NotFound
from inference import openai as openai_api
from inference.gateway import Gateway
from inference.routes import Target
from inference.wire import BatchReply, Outputs, Tensors
from registry import services
from registry.access import PREDICTOR
from registry.models import ModelAlias, ModelVersion
from registry.text_tasks import task_signature


def test_model_addresses_name_alias_and_version():
    assert openai_api.model_address("minilm") == ("minilm", None)
    assert openai_api.model_address("minilm:staging") == ("minilm", "staging")
    assert openai_api.model_address("minilm:3") == ("minilm", "3")
    assert openai_api.model_id("minilm", "production") == "minilm"
    assert openai_api.model_id("minilm", "canary") == "minilm:canary"
    for wrong in (":3", "minilm:", "a:b:c"):
        with pytest.raises(InvalidInput, match="is not a model address"):
            openai_api.model_address(wrong)


def test_an_embeddings_request_takes_a_text_or_a_list():
    request = openai_api.embeddings_request({"model": "m", "input": "hello", "user": "u-1"})
    assert (request.model, request.texts, request.encoding_format, request.dimensions) == (
        "m",
        ["hello"],
        "float",
        None,
    )
    request = openai_api.embeddings_request(
        {"model": "m:2", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 384}
    )
    assert (request.texts, request.encoding_format, request.dimensions) == (["a", "b"], "base64", 384)


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ([], None, "must be a JSON object"),
        ({"input": "x"}, "model", "You must provide a model"),
        ({"model": "m"}, "input", "You must provide an input"),
        ({"model": "m", "input": [[1, 2, 3]]}, "input", "token ids is not supported"),
        ({"model": "m", "input": [1, 2]}, "input", "token ids is not supported"),
        ({"model": "m", "input": ["a", 3]}, "input", "a string or a list of strings"),
        ({"model": "m", "input": ""}, "input", "text 0 is empty"),
        ({"model": "m", "input": []}, "input", "holds no text"),
        ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format", "'int8' is not supported"),
        ({"model": "m", "input": "x", "dimensions": "384"}, "dimensions", "positive integer"),
        ({"model": "m", "input": "x", "temperature": 1}, "temperature", "Unrecognized request argument"),
    ],
)
def test_bad_embeddings_requests_name_the_field(body, param, fragment):
    with pytest.raises(InvalidInput) as caught:
        openai_api.embeddings_request(body)
    assert fragment in caught.value.message and caught.value.field == param


def test_embeddings_answer_in_floats_or_little_endian_base64():
    vectors = np.array([[0.5, -1.0], [0.25, 2.0]], dtype=np.float32)
    answer = openai_api.embeddings_response("m", vectors, 7, "float")
    assert answer == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
            {"object": "embedding", "index": 1, "embedding": [0.25, 2.0]},
        ],
        "model": "m",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    encoded = openai_api.embeddings_response("m", vectors, 7, "base64")["data"][1]["embedding"]
    # As the openai client decodes it: little-endian float32.
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(encoded), dtype="<f4"), vectors[1])


def test_errors_have_openai_s_shape():
    assert openai_api.error_document(401, "bad key") == {
        "error": {"message": "bad key", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    }
    assert openai_api.error_document(429, "slow down")["error"]["code"] == "rate_limit_exceeded"
    assert openai_api.error_document(503, "no broker")["error"]["type"] == "server_error"
    assert openai_api.error_document(400, "bad", "input")["error"]["param"] == "input"


# --- the ASGI app over a fake gateway ------------------------------------------------------------


def _target(task: str, hidden: int = 4) -> Target:
    return Target(
        version_id=9, model_name="minilm", version=1, status="ready", format="huggingface",
        signature=task_signature(task, {"hidden_size": hidden, "num_labels": 2}), queue="inference",
        max_batch_size=8, max_batch_delay_ms=0, ready_versions=(1,), model_id=3, actions=PREDICTOR, task=task,
    )  # fmt: skip


class FakeGateway(Gateway):
    """Routes every model to `target`; the workers answer unit embeddings and record what they got."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.routed = target
        self.sent: list[tuple[list[Tensors], list[dict[str, Any]]]] = []

    async def user(self, headers: dict[bytes, bytes], address: str = "local") -> Any:
        return AnonymousUser()

    async def target(self, user: Any, name: str, version: str | None) -> Target:
        return self.routed

    def connection(self) -> Any:
        return None

    async def exchange(
        self, target: Target, requests: list[Tensors], parameters: list[dict[str, Any]], deadline: float | None = None
    ) -> BatchReply:
        self.sent.append((requests, parameters))
        answers = []
        for tensors in requests:
            rows = len(tensors["text"])
            answers.append(
                Outputs({"embedding": np.eye(rows, 4, dtype=np.float32), "tokens": np.full(rows, 5, dtype=np.int64)})
            )
        return BatchReply("b", list(answers), 0.1, 0.2, 1, "w")


def call(app: Any, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-length", str(len(raw)).encode())]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, json.loads(sent[1]["body"])


def test_embeddings_go_through_the_coalescer_unit_length_and_untruncated():
    gateway = FakeGateway(_target("feature-extraction"))
    app = openai_api.OpenAIApi(gateway)
    status, _, body = call(app, "POST", "/v1/embeddings", {"model": "minilm", "input": ["a", "b"]})
    assert status == 200, body
    assert [item["embedding"] for item in body["data"]] == [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    assert body["usage"] == {"prompt_tokens": 10, "total_tokens": 10} and body["model"] == "minilm"
    ((requests, parameters),) = gateway.sent
    assert requests[0]["text"].tolist() == [b"a", b"b"]
    assert parameters == [{"truncate": False, "normalize": True}]


@pytest.mark.parametrize(
    ("task", "body", "status", "param", "fragment"),
    [
        ("fill-mask", {"model": "minilm", "input": "x"}, 400, "model",
         "is a fill-mask model; /v1/embeddings needs a feature-extraction"),
        ("feature-extraction", {"model": "minilm", "input": "x", "dimensions": 3}, 400, "dimensions",
         "embeddings of 4 dimensions; dimensions=3"),
        ("feature-extraction", b"{not json", 400, None, "not valid JSON"),
    ],
)  # fmt: skip
def test_embeddings_refusals_are_openai_errors(task, body, status, param, fragment):
    app = openai_api.OpenAIApi(FakeGateway(_target(task)))
    got, headers, answer = call(app, "POST", "/v1/embeddings", body)
    assert got == status and headers["content-type"] == "application/json"
    assert fragment in answer["error"]["message"] and answer["error"]["param"] == param
    assert answer["error"]["type"] == "invalid_request_error"


def test_an_unknown_v1_path_is_an_openai_404():
    status, _, body = call(openai_api.OpenAIApi(FakeGateway(_target("feature-extraction"))), "GET", "/v1/chat")
    assert status == 404 and body["error"]["code"] == "unknown_url"


# --- GET /v1/models: what the caller may predict with --------------------------------------------


def _text_version(owner: Any, name: str, *, status: str = "ready", format: str = "huggingface") -> Any:
    model = services.model_create(actor=owner, name=name)
    return ModelVersion.objects.create(
        model=model, version=1, format=format, task="feature-extraction" if format == "huggingface" else "",
        artifact=f"{name}.zip", sha256="0" * 64, size_bytes=1, status=status,
    )  # fmt: skip


@pytest.mark.django_db
def test_the_model_list_names_each_alias_of_a_ready_text_model_the_caller_may_predict_with(owner, member, outsider):
    ready = _text_version(owner, "minilm")
    for alias in ("production", "staging"):
        ModelAlias.objects.create(model=ready.model, name=alias, version=ready)
    pending = _text_version(owner, "pending", status="validating")
    ModelAlias.objects.create(model=pending.model, name="production", version=pending)
    tensor = _text_version(owner, "iris", format="torchscript")
    ModelAlias.objects.create(model=tensor.model, name="production", version=tensor)

    cards = openai_api.models_usable(owner)
    assert [card["id"] for card in cards] == ["minilm", "minilm:staging"]
    assert cards[0] == {"id": "minilm", "object": "model", "created": int(ready.created_at.timestamp()),
                        "owned_by": owner.username}  # fmt: skip
    assert openai_api.models_usable(outsider) == []
    services.role_grant(actor=owner, model=ready.model, role="viewer", username=member.username)
    assert openai_api.models_usable(member) == []  # may see it, not predict with it
    services.role_grant(actor=owner, model=ready.model, role="predictor", username=member.username)
    assert [card["id"] for card in openai_api.models_usable(member)] == ["minilm", "minilm:staging"]
    assert openai_api.models_usable(AnonymousUser()) == []

    assert openai_api.model_retrieve(owner, "minilm:1")["id"] == "minilm:1"
    with pytest.raises(NotFound, match="tensor"):
        openai_api.model_retrieve(owner, "iris")
    with pytest.raises(NotFound):
        openai_api.model_retrieve(outsider, "minilm")
