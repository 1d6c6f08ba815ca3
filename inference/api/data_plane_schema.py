"""The data plane in the API docs: /v2 (Open Inference Protocol) and /v1 (OpenAI-compatible).

Both are served by lean ASGI apps beside Django (inference.gateway, inference.openai), so
drf-spectacular does not see them; `data_plane_paths` (a postprocessing hook) adds their
paths and schemas to the one schema the docs page shows, under two tags of their own.
"""

from __future__ import annotations

from typing import Any

OIP = "Data plane: Open Inference Protocol v2"
OPENAI = "Data plane: OpenAI-compatible"
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {}]  # a token, or none for publicly predictable models


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int, openai: bool = False) -> dict[str, Any]:
    reasons = {
        400: "Bad input: the message names the field or tensor",
        401: "No token, or an invalid, expired or revoked one",
        403: "The token's scopes, model list or the caller's role do not allow it",
        404: "No such model, version or alias (or not visible to the caller)",
        413: "The body is over INFERENCE_MAX_BODY_BYTES",
        429: "Requests or tokens per minute of the token used up (Retry-After says when to retry)",
        503: "Not ready, no live worker, or the model's queue is full (Retry-After)",
        504: "No worker answered within INFERENCE_TIMEOUT_SECONDS",
    }
    schema = _ref("OpenAIError" if openai else "InferenceError")
    return {str(status): _json(schema, reasons[status]) for status in statuses}


MODEL = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "description": "Model name"}
VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "A version number or an alias (production, staging, …)",
}


def _model_paths() -> dict[str, Any]:
    """/v2/models/{name}[/versions/{version}] with and without the version part."""
    paths: dict[str, Any] = {}
    for prefix, parameters in (
        ("/v2/models/{name}", [MODEL]),
        ("/v2/models/{name}/versions/{version}", [MODEL, VERSION]),
    ):
        addressed = "the production alias" if len(parameters) == 1 else "the version or alias"
        paths[prefix] = {
            "get": {
                "tags": [OIP],
                "summary": f"Model metadata ({addressed})",
                "parameters": parameters,
                "security": SECURITY,
                "responses": {"200": _json(_ref("ModelMetadata")), **_errors(401, 403, 404)},
            }
        }
        paths[f"{prefix}/ready"] = {
            "get": {
                "tags": [OIP],
                "summary": f"Whether {addressed} can serve now",
                "parameters": parameters,
                "security": SECURITY,
                "responses": {"200": {"description": "Ready"}, **_errors(400, 401, 404)},
            }
        }
        paths[f"{prefix}/infer"] = {
            "post": {
                "tags": [OIP],
                "summary": f"Predict with {addressed}",
                "parameters": parameters,
                "security": SECURITY,
                "description": "JSON tensors, or the binary tensor extension (Inference-Header-Content-Length). "
                "Text models take a BYTES input `text`; their task settings go in `parameters`.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("InferenceRequest")}},
                },
                "responses": {
                    "200": _json(_ref("InferenceResponse")),
                    **_errors(400, 401, 403, 404, 413, 429, 503, 504),
                },
            }
        }
    paths["/v2/models/{name}/stats"] = {
        "get": {
            "tags": [OIP],
            "summary": "Serving statistics of a model (like Triton's)",
            "parameters": [
                MODEL,
                {"name": "window", "in": "query", "schema": {"type": "string", "enum": ["hour", "day", "week"]}},
            ],
            "security": [{"bearerAuth": []}],
            "responses": {"200": _json({"type": "object"}), **_errors(401, 404)},
        }
    }
    return paths


def _server_paths() -> dict[str, Any]:
    return {
        "/v2": {
            "get": {
                "tags": [OIP],
                "summary": "Server metadata",
                "security": [{}],
                "responses": {"200": _json(_ref("ServerMetadata"))},
            }
        },
        "/v2/health/live": {
            "get": {
                "tags": [OIP],
                "summary": "The gateway is up",
                "security": [{}],
                "responses": {"200": {"description": "Live"}},
            }
        },
        "/v2/health/ready": {
            "get": {
                "tags": [OIP],
                "summary": "At least one prediction worker is live",
                "security": [{}],
                "responses": {"200": {"description": "Ready"}, **_errors(503)},
            }
        },
    }


def _openai_paths() -> dict[str, Any]:
    model_id = {
        "name": "model",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "`name` (its production alias), `name:alias` or `name:3`",
    }

    def post(summary: str, request: str, response: str, description: str) -> dict[str, Any]:
        return {
            "post": {
                "tags": [OPENAI],
                "summary": summary,
                "description": description,
                "security": SECURITY,
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
                "responses": {
                    "200": {
                        "description": "The answer; with `stream: true` Server-Sent Events, one chunk per step, "
                        "then `data: [DONE]`",
                        "content": {
                            "application/json": {"schema": _ref(response)},
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(400, 401, 403, 404, 413, 429, 503, 504, openai=True),
                },
            }
        }

    return {
        "/v1/models": {
            "get": {
                "tags": [OPENAI],
                "summary": "Text models the caller may use, one per alias",
                "security": SECURITY,
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/v1/models/{model}": {
            "get": {
                "tags": [OPENAI],
                "summary": "One model",
                "parameters": [model_id],
                "security": SECURITY,
                "responses": {"200": _json({"type": "object"}), **_errors(401, 404, openai=True)},
            }
        },
        "/v1/embeddings": post(
            "Embeddings of texts (feature-extraction models)",
            "EmbeddingsRequest",
            "EmbeddingsResponse",
            "Unit-length vectors; `encoding_format` float or base64.",
        ),
        "/v1/completions": post(
            "Continue a prompt (text-generation models)",
            "CompletionRequest",
            "Completion",
            "Continuous batching on the workers; per-request sampling settings.",
        ),
        "/v1/chat/completions": post(
            "Answer a conversation (text-generation models with a chat template)",
            "ChatCompletionRequest",
            "ChatCompletion",
            "The model's chat template turns `messages` into its prompt (400 if it has none).",
        ),
    }


TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {
            "type": "string",
            "enum": ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"],
        },
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "array", "items": {}, "description": "Flat (row-major) or nested values"},
        "parameters": {"type": "object"},
    },
}
SAMPLING = {
    "max_tokens": {"type": "integer", "minimum": 1, "description": "Default and maximum set per model version"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2, "description": "0: greedy"},
    "top_p": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0, "description": "An extension: 0 keeps the whole vocabulary"},
    "seed": {"type": "integer"},
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
    "n": {"type": "integer", "enum": [1]},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
}
USAGE = {
    "type": "object",
    "properties": {name: {"type": "integer"} for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
}


def _completion(kind: str, answer: dict[str, Any]) -> dict[str, Any]:
    """A completion or chat completion answer: the same envelope, choices holding `answer`'s field."""
    choice = {"index": {"type": "integer"}, **answer, "finish_reason": {"type": "string", "enum": ["stop", "length"]}}
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": [kind]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "usage": USAGE,
            "choices": {"type": "array", "items": {"type": "object", "properties": choice}},
        },
    }


SCHEMAS: dict[str, Any] = {
    "ServerMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"type": "object"}},
            "outputs": {"type": "array", "items": {"type": "object"}},
        },
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": TENSOR},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                },
            },
        },
    },
    "InferenceResponse": {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object", "description": "queue_ms, compute_ms, batch_size, worker"},
            "outputs": {"type": "array", "items": TENSOR},
        },
    },
    "InferenceError": {"type": "object", "properties": {"error": {"type": "string"}}},
    "OpenAIError": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": "string", "nullable": True},
                    "code": {"type": "string", "nullable": True},
                },
            }
        },
    },
    "EmbeddingsRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string"},
            "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "dimensions": {"type": "integer"},
        },
    },
    "EmbeddingsResponse": {
        "type": "object",
        "properties": {
            "object": {"type": "string"},
            "model": {"type": "string"},
            "usage": USAGE,
            "data": {"type": "array", "items": {"type": "object"}},
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            "model": {"type": "string"},
            "prompt": {"type": "string"},
            "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
            **SAMPLING,
        },
    },
    "Completion": _completion("text_completion", {"text": {"type": "string"}}),
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string"},
            "logprobs": {"type": "boolean"},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {
                        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
                        "content": {"type": "string"},
                    },
                },
            },
            **SAMPLING,
        },
    },
    "ChatCompletion": _completion(
        "chat.completion",
        {"message": {"type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}}}},
    ),
}


def data_plane_paths(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add the /v2 and /v1 paths, their schemas and tags."""
    paths = {**_server_paths(), **_model_paths(), **_openai_paths()}
    for path, operations in paths.items():
        for method, operation in operations.items():
            slug = path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
            operation["operationId"] = f"{slug}_{method}"
    result.setdefault("paths", {}).update(paths)
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(SCHEMAS)
    components.setdefault("securitySchemes", {}).setdefault(
        "bearerAuth", {"type": "http", "scheme": "bearer", "description": "An API token: mp_<prefix>_<secret>"}
    )
    result.setdefault("tags", [])
    result["tags"] += [
        {
            "name": OIP,
            "description": "KServe/Triton's protocol, served beside the REST API at /v2 (tritonclient works).",
        },
        {"name": OPENAI, "description": "The OpenAI API's shapes at /v1 (the official openai client works)."},
    ]
    return result


__all__ = ["OIP", "OPENAI", "data_plane_paths"]
