"""Hugging Face text tasks: what each one takes and answers, and how it is told from a config.

A `huggingface` version declares one task. Its signature follows from the task: one BYTES
input `text` (one UTF-8 string per row) and the task's outputs, ending with `tokens` (how
many tokens the model read per text, after truncation: what usage is metered in; for text
generation, the completion and how many tokens it has). Shapes of `-1` past the batch
dimension vary per request (fill-mask's top_k, token counts).
"""

from __future__ import annotations

from typing import Any

from django.db import models

TEXT_INPUT = "text"
TOKENS_OUTPUT = "tokens"


class TextTask(models.TextChoices):
    FILL_MASK = "fill-mask", "fill-mask (masked language model)"
    TEXT_CLASSIFICATION = "text-classification", "text classification"
    TOKEN_CLASSIFICATION = "token-classification", "token classification (named entities, tags)"
    FEATURE_EXTRACTION = "feature-extraction", "feature extraction (sentence embeddings)"
    TEXT_GENERATION = "text-generation", "text generation (causal language model: completions and chat)"


# Tasks that arrive later: named so that an upload of one is refused with a reason (none at present).
LATER_TASKS: dict[str, str] = {}
# "embeddings" is what the OpenAI API calls feature extraction.
TASK_ALIASES = {"embeddings": TextTask.FEATURE_EXTRACTION, "sentence-similarity": TextTask.FEATURE_EXTRACTION}

# The suffix of a config's architecture name tells its task (BertForMaskedLM → fill-mask).
ARCHITECTURE_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("ForMaskedLM", TextTask.FILL_MASK),
    ("ForSequenceClassification", TextTask.TEXT_CLASSIFICATION),
    ("ForTokenClassification", TextTask.TOKEN_CLASSIFICATION),
    ("ForCausalLM", TextTask.TEXT_GENERATION),
    ("LMHeadModel", TextTask.TEXT_GENERATION),
    ("Model", TextTask.FEATURE_EXTRACTION),
)

# Request parameters each task accepts (OIP `parameters`, the friendly endpoint's `parameters`).
TASK_PARAMETERS: dict[str, tuple[str, ...]] = {
    TextTask.FILL_MASK: ("top_k", "truncate"),
    TextTask.TEXT_CLASSIFICATION: ("top_k", "truncate"),
    TextTask.TOKEN_CLASSIFICATION: ("truncate",),
    TextTask.FEATURE_EXTRACTION: ("truncate", "normalize"),
    # Generation takes its settings through /v1/completions and /v1/chat/completions, not /v2.
    TextTask.TEXT_GENERATION: (),
}
DEFAULT_TOP_K = {TextTask.FILL_MASK: 5, TextTask.TEXT_CLASSIFICATION: 1}
MAX_TOP_K = 100


def task_from_architectures(architectures: list[str] | None) -> str | None:
    """The task a config's first architecture implies, or None when it implies none."""
    for architecture in architectures or []:
        for suffix, task in ARCHITECTURE_SUFFIXES:
            if architecture.endswith(suffix):
                return task
    return None


def labels_from_config(config: dict[str, Any]) -> list[str]:
    """Class names in index order from a config's id2label ([] when it has none)."""
    raw = config.get("id2label") or {}
    try:
        pairs = sorted((int(index), str(name)) for index, name in raw.items())
    except (TypeError, ValueError, AttributeError):
        return []
    if [index for index, _ in pairs] != list(range(len(pairs))):
        return []
    return [name for _, name in pairs]


def task_signature(task: str, config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The OIP signature of a text task: BYTES `text` in, the task's outputs (then `tokens`) out."""
    inputs = [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]
    if task == TextTask.FILL_MASK:
        outputs = [
            {"name": "token_str", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "score", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "token", "datatype": "INT64", "shape": [-1, -1]},
        ]
    elif task == TextTask.TEXT_CLASSIFICATION:
        classes = len(labels_from_config(config)) or int(config.get("num_labels") or -1)
        outputs = [
            {"name": "scores", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ]
    elif task == TextTask.TOKEN_CLASSIFICATION:
        outputs = [
            {"name": "entity", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "score", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "word", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "start", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "end", "datatype": "INT64", "shape": [-1, -1]},
        ]
    elif task == TextTask.FEATURE_EXTRACTION:
        hidden = int(config.get("hidden_size") or config.get("d_model") or -1)
        outputs = [{"name": "embedding", "datatype": "FP32", "shape": [-1, hidden]}]
    elif task == TextTask.TEXT_GENERATION:
        # The completion of each prompt; `tokens` counts the tokens generated.
        outputs = [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]
    else:
        raise ValueError(f"unknown text task {task!r}")
    outputs.append({"name": TOKENS_OUTPUT, "datatype": "INT64", "shape": [-1]})
    return {"inputs": inputs, "outputs": outputs}


__all__ = [
    "DEFAULT_TOP_K",
    "LATER_TASKS",
    "MAX_TOP_K",
    "TASK_ALIASES",
    "TASK_PARAMETERS",
    "TEXT_INPUT",
    "TOKENS_OUTPUT",
    "TextTask",
    "labels_from_config",
    "task_from_architectures",
    "task_signature",
]
