"""Text requests to Hugging Face models: the request-side checks and the friendly answers.

Every entry point of a text model (the /v2 gateway, the friendly REST endpoint, the OpenAI
compatible /v1 API) checks its texts and parameters here before anything reaches a worker,
so a caller gets the same 400, naming the same problem, whichever door they used:

- texts: at least one, at most INFERENCE_TEXT_MAX_ITEMS, none empty, each valid UTF-8
  (binary BYTES tensors may carry any bytes);
- parameters: only those the model's task takes (registry.text_tasks.TASK_PARAMETERS),
  each of its type and within its limits. The Open Inference Protocol's own request
  parameters (binary_data_output and the like) are not text parameters and pass by.

`friendly_answer` turns a worker's output tensors into the task's natural shape, close to
what a Hugging Face `pipeline()` returns. Pure functions: no I/O, no Django request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from django.conf import settings

from core.errors import InvalidInput
from inference import wire
from registry.text_tasks import DEFAULT_TOP_K, MAX_TOP_K, TASK_PARAMETERS, TOKENS_OUTPUT, TextTask

# Request parameters of the protocol itself (Triton's reserved names): never text parameters.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "priority", "timeout", "sequence_id", "sequence_start", "sequence_end"}
)
BOOL_PARAMETERS = frozenset({"truncate", "normalize"})
# Mask markers of the common tokenizers (BERT's [MASK], RoBERTa's <mask>), for `sequence`.
MASK_MARKER = re.compile(r"\[MASK\]|<mask>")


def not_generative(task: str, model: str, version: int) -> None:
    """Refuse (400) a text-generation model at a door that does not generate: they answer on /v1."""
    if task == TextTask.TEXT_GENERATION:
        raise InvalidInput(
            f"Model {model!r} v{version} generates text: this endpoint does not serve text-generation models; "
            "use POST /v1/completions or /v1/chat/completions (OpenAI-compatible, see docs/openai.md).",
            field="model",
        )


def texts_check(items: Sequence[bytes | str], where: str) -> list[str]:
    """The texts of a request, decoded; InvalidInput names the first problem (`where`: the input)."""
    limit = settings.INFERENCE_TEXT_MAX_ITEMS
    if not items:
        raise InvalidInput(f"{where} holds no text; send at least one.", field=where)
    if len(items) > limit:
        raise InvalidInput(
            f"{where} holds {len(items)} texts, over the limit of {limit} per request (INFERENCE_TEXT_MAX_ITEMS); "
            "split it into several requests.",
            field=where,
        )
    texts = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            text = item
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    # JSON's \ud800-style escapes can spell a lone surrogate, which no UTF-8 text holds.
                    raise InvalidInput(f"{where}: text {index} holds {text[exc.start]!r}, which is not valid "
                                       "Unicode text (a lone surrogate).", field=where) from None  # fmt: skip
        else:
            try:
                text = bytes(item).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"{where}: text {index} is not valid UTF-8 (byte {bytes(item)[exc.start]:#04x} at position "
                    f"{exc.start}).",
                    field=where,
                ) from None
        if not text:
            raise InvalidInput(f"{where}: text {index} is empty; every text needs at least one character.", field=where)
        texts.append(text)
    return texts


def texts_of_tensor(array: np.ndarray, where: str) -> list[str]:
    """The texts of a BYTES tensor (any shape, row-major), checked."""
    return texts_check(array.reshape(-1).tolist(), where)


def parameters_check(task: str, parameters: Any, *, protocol: bool = False) -> dict[str, Any]:
    """The text parameters of a request, checked against its model's task.

    `protocol`: the parameters are an OIP request's, whose own keys (binary_data_output, ...)
    pass by and are left out of the result.
    """
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object.", field="parameters")
    taken = TASK_PARAMETERS.get(task, ())
    checked: dict[str, Any] = {}
    for name, value in parameters.items():
        if protocol and name in PROTOCOL_PARAMETERS:
            continue
        if name not in taken:
            accepted = ", ".join(taken) or "none"
            raise InvalidInput(
                f"parameter {name!r} is not taken by {task} models; they take: {accepted}.", field="parameters"
            )
        if name == "top_k":
            if type(value) is not int or not 1 <= value <= MAX_TOP_K:
                raise InvalidInput(
                    f"parameter 'top_k' must be an integer from 1 to {MAX_TOP_K}, got {value!r}.", field="parameters"
                )
        elif name in BOOL_PARAMETERS and not isinstance(value, bool):
            raise InvalidInput(f"parameter {name!r} must be true or false, got {value!r}.", field="parameters")
        checked[name] = value
    return checked


def texts_tensor(texts: Sequence[str]) -> np.ndarray:
    """A BYTES tensor of shape [n] holding the texts as UTF-8."""
    return wire.bytes_array([text.encode() for text in texts], [len(texts)])


def friendly_texts(inputs: Any) -> tuple[list[str], bool]:
    """The texts of a friendly request (`"text"` or `["a", "b"]`) and whether one string was sent."""
    if isinstance(inputs, str):
        return texts_check([inputs], "inputs"), True
    if isinstance(inputs, list) and all(isinstance(item, str) for item in inputs):
        return texts_check(inputs, "inputs"), False
    raise InvalidInput('inputs must be a text or a list of texts: {"inputs": "..."} or {"inputs": ["...", "..."]}.',
                       field="inputs")  # fmt: skip


def usage_tokens(outputs: dict[str, np.ndarray]) -> int:
    """Tokens the model read for a request (the `tokens` output, summed over its texts)."""
    tokens = outputs.get(TOKENS_OUTPUT)
    return int(np.asarray(tokens).sum()) if tokens is not None else 0


def _text(item: Any) -> str:
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def friendly_answer(
    task: str,
    texts: Sequence[str],
    outputs: dict[str, np.ndarray],
    parameters: dict[str, Any],
    labels: Sequence[str] = (),
) -> list[Any]:
    """One answer per text in the task's natural shape (like a Hugging Face pipeline's).

    - fill-mask: `[{"token_str", "score", "token", "sequence"}, ...]` best first;
    - text-classification: the `top_k` best `[{"label", "score"}, ...]`;
    - token-classification: `[{"entity", "score", "word", "start", "end"}, ...]` (padding dropped);
    - feature-extraction: the embedding, a list of floats.
    """
    if task == TextTask.FILL_MASK:
        return [_fill_mask_row(text, outputs, row) for row, text in enumerate(texts)]
    if task == TextTask.TEXT_CLASSIFICATION:
        top_k = parameters.get("top_k", DEFAULT_TOP_K[TextTask.TEXT_CLASSIFICATION])
        scores = np.asarray(outputs["scores"], dtype=np.float64)
        names = list(labels) or [f"LABEL_{index}" for index in range(scores.shape[1])]
        answers = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:top_k]
            answers.append([{"label": names[int(i)], "score": float(row[i])} for i in order])
        return answers
    if task == TextTask.TOKEN_CLASSIFICATION:
        return [_entities_row(outputs, row) for row in range(len(texts))]
    if task == TextTask.FEATURE_EXTRACTION:
        return [[float(x) for x in vector] for vector in np.asarray(outputs["embedding"], dtype=np.float32)]
    raise ValueError(f"unknown text task {task!r}")


def _fill_mask_row(text: str, outputs: dict[str, np.ndarray], row: int) -> list[dict[str, Any]]:
    candidates = []
    for token_str, score, token in zip(outputs["token_str"][row], outputs["score"][row], outputs["token"][row],
                                       strict=True):  # fmt: skip
        word = _text(token_str)
        candidates.append({"token_str": word, "score": float(score), "token": int(token),
                           "sequence": MASK_MARKER.sub(word.strip(), text, count=1)})  # fmt: skip
    return candidates


def _entities_row(outputs: dict[str, np.ndarray], row: int) -> list[dict[str, Any]]:
    entities = []
    columns = zip(outputs["entity"][row], outputs["score"][row], outputs["word"][row], outputs["start"][row],
                  outputs["end"][row], strict=True)  # fmt: skip
    for entity, score, word, start, end in columns:
        name = _text(entity)
        # A request's rows are padded to its longest; padding has no entity.
        if not name or int(start) < 0:
            continue
        entities.append({"entity": name, "score": float(score), "word": _text(word), "start": int(start),
                         "end": int(end)})  # fmt: skip
    return entities


__all__ = [
    "PROTOCOL_PARAMETERS",
    "friendly_answer",
    "friendly_texts",
    "not_generative",
    "parameters_check",
    "texts_check",
    "texts_of_tensor",
    "texts_tensor",
    "usage_tokens",
]
