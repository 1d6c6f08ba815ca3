"""/v2 inference of text models in the gateway, over fake workers: checks, parameters, BYTES both ways."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from core.errors import InvalidInput
from inference.gateway import Gateway, HttpError
from inference.routes import Target
from inference.wire import BatchReply, Failure, Outputs, Tensors, bytes_array
from registry.access import PREDICTOR
from registry.text_tasks import task_signature


def _target() -> Target:
    return Target(
        version_id=5, model_name="bert", version=2, status="ready", format="huggingface",
        signature=task_signature("fill-mask", {}), queue="inference", max_batch_size=8, max_batch_delay_ms=0,
        ready_versions=(2,), model_id=1, actions=PREDICTOR, task="fill-mask",
    )  # fmt: skip


class FillMaskWorkers(Gateway):
    """Answers top_k candidates per text ("w0", "w1", ...), or the failure it is given."""

    def __init__(self, failure: Failure | None = None) -> None:
        super().__init__()
        self.failure = failure
        self.parameters: list[dict[str, Any]] = []

    async def exchange(
        self, target: Target, requests: list[Tensors], parameters: list[dict[str, Any]], deadline: float | None = None
    ) -> BatchReply:
        self.parameters += parameters
        answers: list[Outputs | Failure] = []
        for tensors, params in zip(requests, parameters, strict=True):
            rows, k = len(tensors["text"]), params.get("top_k", 5)
            words = [f"w{i}".encode() for _ in range(rows) for i in range(k)]
            answers.append(self.failure or Outputs({
                "token_str": bytes_array(words, [rows, k]), "score": np.full((rows, k), 0.5, dtype=np.float32),
                "token": np.ones((rows, k), dtype=np.int64), "tokens": np.full(rows, 6, dtype=np.int64),
            }))  # fmt: skip
        return BatchReply("b", answers, 0.1, 0.2, 1, "w")


def infer(gateway: Gateway, body: bytes, header_length: int | None = None) -> tuple[int, bytes, dict[str, str]]:
    headers = {b"content-length": str(len(body)).encode()}
    if header_length is not None:
        headers[b"inference-header-content-length"] = str(header_length).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return asyncio.run(gateway.infer(_target(), headers, receive))


def text_request(texts: list[str], **parameters: Any) -> bytes:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    return json.dumps({"inputs": [tensor], "parameters": parameters}).encode()


def test_json_texts_with_top_k_answer_bytes_as_strings():
    workers = FillMaskWorkers()
    status, body, _ = infer(workers, text_request(["Paris is the [MASK] of France."], top_k=2))
    assert status == 200
    outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert outputs["token_str"] == {"name": "token_str", "datatype": "BYTES", "shape": [1, 2], "data": ["w0", "w1"]}
    assert outputs["tokens"]["data"] == [6]
    assert workers.parameters == [{"top_k": 2}]


def test_binary_bytes_in_and_out_as_tritonclient_writes_and_reads_them():
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"a [MASK].", "é [MASK]".encode()], dtype=object), binary_data=True)
    wanted = [triton.InferRequestedOutput(name, binary_data=True) for name in ("token_str", "score")]
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [text], outputs=wanted, parameters={"top_k": 3}
    )
    workers = FillMaskWorkers()
    status, answer, headers = infer(workers, body, json_size)
    assert status == 200
    result = triton.InferenceServerClient.parse_response_body(
        answer, header_length=int(headers["Inference-Header-Content-Length"])
    )
    assert result.as_numpy("token_str").tolist() == [[b"w0", b"w1", b"w2"]] * 2
    assert result.as_numpy("score").shape == (2, 3)
    assert workers.parameters == [{"top_k": 3}]


@pytest.mark.parametrize(
    ("texts", "parameters", "fragment"),
    [
        ([""], {}, "input 'text': text 0 is empty"),
        (["ok"], {"top_k": 1000}, "'top_k' must be an integer from 1 to 100"),
        (["ok"], {"normalize": True}, "'normalize' is not taken by fill-mask models"),
    ],
)
def test_bad_text_requests_are_400_before_any_worker(texts, parameters, fragment):
    workers = FillMaskWorkers()
    with pytest.raises(InvalidInput, match=fragment):
        infer(workers, text_request(texts, **parameters))
    assert workers.parameters == []


def test_non_utf8_binary_text_is_400():
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=object), binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body([text])
    with pytest.raises(InvalidInput, match="text 0 is not valid UTF-8"):
        infer(FillMaskWorkers(), body, json_size)


def test_a_worker_s_400_stays_a_400():
    workers = FillMaskWorkers(Failure("text 0 has 600 tokens, over the model's maximum of 512", 400))
    with pytest.raises(HttpError) as caught:
        infer(workers, text_request(["long"], truncate=False))
    assert caught.value.status == 400 and "over the model's maximum" in caught.value.message
