"""Reference (b) of bench/text.py: the naive text server — Starlette + the model in-process,
one request at a time per process, as a team would write it in an afternoon.

    BENCH_TEXT_MODELS=embeddings=/tmp/emb,classification=/tmp/cls \\
        uvicorn bench.reference_text:application --workers 2 --lifespan off

It takes the same OIP v2 JSON body as the portal (`text`, BYTES, one or more strings) and
answers the same outputs: a text-classification `pipeline()` per request (softmax scores of
every label), or for an embedding model the tokenizer and a forward with mean pooling and
L2 normalisation (what `pipeline("feature-extraction")` leaves to the caller).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from transformers import AutoModel, AutoTokenizer, pipeline
from transformers.utils import logging as hf_logging

torch.set_num_threads(1)
hf_logging.disable_progress_bar()


def _load(spec: str) -> dict[str, Any]:
    served: dict[str, Any] = {}
    for item in spec.split(","):
        name, _, path = item.partition("=")
        if name == "classification":
            served[name] = pipeline("text-classification", model=path, tokenizer=path, device="cpu", top_k=None)
        else:
            served[name] = (AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval())
    return served


MODELS = _load(os.environ["BENCH_TEXT_MODELS"])


def _embed(texts: list[str], tokenizer: Any, model: Any) -> list[list[float]]:
    encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).tolist()


def predict(name: str, body: bytes) -> dict[str, Any]:
    texts = json.loads(body)["inputs"][0]["data"]
    if name == "classification":
        classifier = MODELS[name]
        results = classifier(texts)
        labels = [entry["label"] for entry in sorted(results[0], key=lambda e: e["label"])]
        order = {label: index for index, label in enumerate(classifier.model.config.id2label.values())}
        scores = [[entry["score"] for entry in sorted(result, key=lambda e: order[e["label"]])] for result in results]
        outputs = [{"name": "scores", "datatype": "FP32", "shape": [len(texts), len(labels)],
                    "data": [value for row in scores for value in row]}]  # fmt: skip
    else:
        vectors = _embed(texts, *MODELS[name])
        outputs = [{"name": "embedding", "datatype": "FP32", "shape": [len(texts), len(vectors[0])],
                    "data": [value for row in vectors for value in row]}]  # fmt: skip
    return {"model_name": name, "outputs": outputs}


async def infer(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in MODELS:
        return Response(json.dumps({"error": f"no model {name}"}), status_code=404, media_type="application/json")
    return Response(json.dumps(predict(name, await request.body())), media_type="application/json")


application = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
