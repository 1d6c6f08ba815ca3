"""What the prediction gateway routes a request to (cached per caller, model and version), and
the error its steps raise (an HTTP status, a message for a person, optional headers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """A model version as the gateway routes it."""

    version_id: int
    model_name: str
    version: int
    status: str
    format: str
    signature: dict[str, Any]
    queue: str
    max_batch_size: int
    max_batch_delay_ms: int
    ready_versions: tuple[int, ...]
    model_id: int = 0
    actions: frozenset[str] = frozenset()  # what the caller's roles allow (registry.access)
    task: str = ""  # the text task of a huggingface version (registry.text_tasks); "" for tensor models
    # Text generation (task text-generation): max_tokens when a request leaves it out, the most
    # one may ask for, the model's context in tokens, and whether its tokenizer has a chat template.
    max_tokens_default: int = 0
    max_tokens_limit: int = 0
    context_length: int = 0
    chat_template: bool = False
    labels: tuple[str, ...] = ()  # class names of a classifier's first output (registry ModelVersion.labels)


class HttpError(Exception):
    """A request answered with `status` and `message` (and `headers`, e.g. Retry-After); `code`
    names it where the REST API's codes (core.errors) would say more than the status does."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.code = code
