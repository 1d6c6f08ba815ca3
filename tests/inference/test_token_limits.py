"""Tokens-per-minute limits in the data plane (/v1, /v2 and the friendly endpoint's checks), over fake
workers and a private Redis: refused 429 with Retry-After once a window's tokens reach the limit, and
the tokens answered are charged and metered for the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from core import redis as shared_redis
from core.errors import TooManyRequests
from core.throttle import TOKENS
from inference import openai as openai_api
from inference import predict
from inference.gateway import Gateway
from inference.routes import Target
from inference.wire import BatchReply, Outputs, Tensors
from monitoring import metrics
from registry.access import PREDICTOR, TokenGrant
from registry.text_tasks import task_signature
from tests.core.conftest import _redis_socket, redis_url  # noqa: F401 - a private Redis for the limits
from tests.inference.test_openai import call

TOKENS_PER_TEXT = 5


@dataclass
class Caller:
    """A user as an API token presents it (what the gateway's token cache holds)."""

    api_grant: TokenGrant
    pk: int = 4
    is_authenticated: bool = True
    is_staff: bool = False


def caller(tokens_per_minute: int | None, token_id: int = 77) -> Caller:
    grant = TokenGrant(token_id=token_id, scopes=frozenset({"read", "predict"}), model_ids=None,
                       rate_limit_per_minute=None, tokens_per_minute=tokens_per_minute)  # fmt: skip
    return Caller(grant)


def _target(task: str) -> Target:
    return Target(
        version_id=9, model_name="minilm", version=1, status="ready", format="huggingface",
        signature=task_signature(task, {"hidden_size": 4, "num_labels": 2}), queue="inference",
        max_batch_size=8, max_batch_delay_ms=0, ready_versions=(1,), model_id=3, actions=PREDICTOR, task=task,
    )  # fmt: skip


class TextWorkers(Gateway):
    """Every request comes from `who`, for `routed`; workers read TOKENS_PER_TEXT tokens per text."""

    def __init__(self, routed: Target, who: Any) -> None:
        super().__init__()
        self.routed, self.who = routed, who

    async def user(self, headers: dict[bytes, bytes], address: str = "local") -> Any:
        return self.who

    async def target(self, user: Any, name: str, version: str | None) -> Target:
        return self.routed

    def connection(self) -> Any:
        return shared_redis.async_client()

    def _connect(self) -> Any:
        return shared_redis.async_client()

    async def exchange(
        self, target: Target, requests: list[Tensors], parameters: list[dict[str, Any]], deadline: float | None = None
    ) -> BatchReply:
        answers = []
        for tensors in requests:
            rows = len(tensors["text"])
            answers.append(Outputs({"embedding": np.eye(rows, 4, dtype=np.float32),
                                    "tokens": np.full(rows, TOKENS_PER_TEXT, dtype=np.int64)}))  # fmt: skip
        return BatchReply("b", list(answers), 0.1, 0.2, 1, "w")


@pytest.fixture(autouse=True)
def _meter(redis_url: str) -> Any:  # noqa: F811 - the imported fixture
    metrics.recorder.reset()
    yield
    metrics.recorder.reset()


def embed(app: Any, texts: list[str]) -> tuple[int, dict[str, str], Any]:
    return call(app, "POST", "/v1/embeddings", {"model": "minilm", "input": texts})


def test_v1_refuses_in_openai_s_shape_once_the_window_s_tokens_reach_the_limit():
    app = openai_api.OpenAIApi(TextWorkers(_target("feature-extraction"), caller(tokens_per_minute=25)))
    assert embed(app, ["a", "b"])[0] == 200  # 10 tokens
    assert embed(app, ["a", "b", "c"])[0] == 200  # 25: reached, but admitted at 10
    status, headers, body = embed(app, ["a"])
    assert status == 429
    assert 0 < int(headers["retry-after"]) <= 60
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "tokens"
    assert "Token limit of 25 tokens per minute reached for token 77 (25 used" in body["error"]["message"]
    assert TOKENS.peek(shared_redis.client(), "token 77")[0].count == 25  # a refused request costs nothing
    # Another token has its own window; a token without a limit is not counted at all.
    other = openai_api.OpenAIApi(TextWorkers(_target("feature-extraction"), caller(25, token_id=78)))
    assert embed(other, ["a"])[0] == 200
    unlimited = openai_api.OpenAIApi(TextWorkers(_target("feature-extraction"), caller(None, token_id=79)))
    assert embed(unlimited, ["a"] * 20)[0] == 200
    assert TOKENS.peek(shared_redis.client(), "token 79")[0].count == 0


def test_v1_meters_the_prompt_tokens_of_answered_requests_for_the_caller():
    app = openai_api.OpenAIApi(TextWorkers(_target("feature-extraction"), caller(None)))
    embed(app, ["a", "b"])
    embed(app, ["c"])
    call(app, "POST", "/v1/embeddings", {"model": "minilm", "input": "x", "dimensions": 3})  # refused: 400
    cells = metrics.recorder.usage_meter.take()
    assert list(cells.values()) == [[2, 15, 0]]
    ((version_id, _, user_id, token_id),) = cells
    assert (version_id, user_id, token_id) == (9, 4, 77)


def v2_infer(gateway: Gateway, texts: list[str]) -> tuple[int, dict[str, str], Any]:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    return call(gateway, "POST", "/v2/models/minilm/infer", body)


def test_v2_refuses_in_its_own_shape_and_charges_the_tokens_output():
    gateway = TextWorkers(_target("feature-extraction"), caller(tokens_per_minute=10))
    status, _, body = v2_infer(gateway, ["a", "b"])
    assert status == 200, body
    tokens = {output["name"]: output["data"] for output in body["outputs"]}["tokens"]
    assert tokens == [TOKENS_PER_TEXT, TOKENS_PER_TEXT]
    status, headers, body = v2_infer(gateway, ["a"])
    assert status == 429 and 0 < int(headers["retry-after"]) <= 60
    assert set(body) == {"error"} and "Token limit of 10 tokens per minute" in body["error"]
    assert list(metrics.recorder.usage_meter.take().values()) == [[1, 10, 0]]


def test_the_friendly_endpoint_s_admission_refuses_a_spent_token_and_charges_answers(settings):
    user = caller(tokens_per_minute=30, token_id=80)
    predict.rate_limit(user)
    predict.tokens_charge(user, 30)
    with pytest.raises(TooManyRequests) as refused:
        predict.rate_limit(user)
    assert 0 < refused.value.retry_after <= 60 and refused.value.headers["Retry-After"]
    predict.tokens_charge(caller(None, token_id=81), 500)  # no limit: nothing counted
    assert TOKENS.peek(shared_redis.client(), "token 81")[0].count == 0


def test_a_redis_that_fails_after_the_answer_does_not_lose_the_answer(settings, caplog):
    user = caller(tokens_per_minute=30, token_id=82)
    settings.INFERENCE_REDIS_URL = "redis://127.0.0.1:1/0"
    shared_redis.reset()
    predict.tokens_charge(user, 5)  # logged, not raised
    assert "could not charge 5 tokens to token 82" in caplog.text
