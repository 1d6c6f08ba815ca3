"""OpenAI's completions and chat completions, shaped: requests checked, answers and stream chunks built.

Pure functions and one small stateful `Shaper` (per answer: its id, the text offset of its
logprobs, whether the chat's first chunk went out); no I/O. inference.openai runs them over the
gateway's generation client, and the playground's view (inference.playground) streams the
same chunks.

What a request may hold, beyond OpenAI's own rules:

- `n` is 1 (one choice per request), `frequency_penalty` / `presence_penalty` only 0;
- `top_k` (an extension: 0 = the whole vocabulary) beside `top_p`;
- `logprobs` gives the log-probability of each sampled token; there are no alternatives, so
  `top_logprobs` lists the sampled token alone (completions) or is refused above 0 (chat).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.errors import InvalidInput
from inference import text
from inference.generation.messages import Output
from inference.routes import Target
from registry.text_tasks import TextTask

COMPLETION = "completion"
CHAT = "chat"
ROLES = ("system", "user", "assistant")
MAX_STOP = 4
MAX_COMPLETION_LOGPROBS = 5
MAX_SEED = 2**63 - 1
# What OpenAI's clients and tools send as a matter of course; each is checked, none is ignored silently.
COMMON_FIELDS = frozenset({"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream",
                           "stream_options", "logprobs", "user", "frequency_penalty", "presence_penalty"})  # fmt: skip
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens", "top_logprobs"}
MESSAGE_FIELDS = frozenset({"role", "content", "name"})
SSE_DONE = b"data: [DONE]\n\n"
# OpenAI's error types and codes per HTTP status (its client picks the exception by status).
ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "requests"}
ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large", 429: "rate_limit_exceeded"}


class OpenAIError(InvalidInput):
    """A 400 about one field of an OpenAI request (`param` in the error document)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message, field=param)


def error_document(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An error as OpenAI answers one."""
    kind = ERROR_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code or ERROR_CODES.get(status)}}


@dataclass(frozen=True)
class GenerationCall:
    """A checked completions or chat completions body."""

    kind: str  # COMPLETION or CHAT
    model: str
    prompt: str | None
    messages: list[dict[str, str]] | None
    max_tokens: int | None  # None: the model's default
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # None: no logprobs; completions: 0-5; chat: 0 (logprobs: true)


# --- requests -----------------------------------------------------------------------------------


def completion_request(raw: Any) -> GenerationCall:
    """Check a POST /v1/completions body (`prompt`: a text, or a list of one text)."""
    body = _body(raw, COMPLETION_FIELDS)
    if body.get("prompt") is None:
        raise OpenAIError("You must provide a prompt parameter: the text to complete.", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        if isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
            raise OpenAIError(f"prompt holds {len(prompt)} texts; this server completes one prompt per request: "
                              "send them as separate requests.", "prompt")  # fmt: skip
        if isinstance(prompt, list) and prompt and all(_is_token_ids(item) for item in prompt):
            raise OpenAIError("prompt as token ids is not supported: send the text.", "prompt")
        raise OpenAIError("prompt must be a string (or a list holding one string).", "prompt")
    (prompt,) = text.texts_check([prompt], "prompt")
    logprobs = body.get("logprobs")
    if logprobs is not None and (type(logprobs) is not int or not 0 <= logprobs <= MAX_COMPLETION_LOGPROBS):
        raise OpenAIError(f"logprobs must be an integer from 0 to {MAX_COMPLETION_LOGPROBS}, got {logprobs!r}.",
                          "logprobs")  # fmt: skip
    return _call(COMPLETION, body, prompt, None, _max_tokens(body, "max_tokens"), logprobs)


def chat_request(raw: Any) -> GenerationCall:
    """Check a POST /v1/chat/completions body (`messages`: system, user and assistant turns)."""
    body = _body(raw, CHAT_FIELDS)
    messages = chat_messages(body.get("messages"))
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise OpenAIError(f"logprobs must be true or false, got {logprobs!r}.", "logprobs")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs not in (None, 0):
        raise OpenAIError("top_logprobs above 0 is not supported: logprobs gives the sampled tokens' only.",
                          "top_logprobs")  # fmt: skip
    # max_completion_tokens is the newer name of max_tokens; it wins when both are sent.
    limit_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return _call(CHAT, body, None, messages, _max_tokens(body, limit_field), 0 if logprobs else None)


def chat_messages(raw: Any) -> list[dict[str, str]]:
    """The turns of a chat as the worker's chat template takes them: [{"role", "content"}] with text content."""
    if not isinstance(raw, list) or not raw:
        raise OpenAIError("messages must be a non-empty list of {role, content} objects.", "messages")
    messages = []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise OpenAIError(f"{where} must be an object with a role and a content.", "messages")
        unknown = sorted(set(message) - MESSAGE_FIELDS)
        if unknown:
            raise OpenAIError(f"{where} has unsupported fields: {', '.join(unknown)} (tools and function calls are "
                              "not supported).", "messages")  # fmt: skip
        role = message.get("role")
        if role not in ROLES:
            raise OpenAIError(f"{where} has an unknown role {role!r}; use one of {', '.join(ROLES)}.", "messages")
        messages.append({"role": role, "content": _content(message.get("content"), where)})
    return messages


def _content(content: Any, where: str) -> str:
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise OpenAIError(f"{where}.content: only text parts ({{'type': 'text', 'text': ...}}) are supported.",
                                  "messages")  # fmt: skip
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise OpenAIError(f"{where}.content must be a string or a list of text parts.", "messages")
    if content:
        text.texts_check([content], f"{where}.content")
    return content


def _body(raw: Any, fields: frozenset[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise OpenAIError("The request body must be a JSON object.", None)
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise OpenAIError(f"Unrecognized request argument supplied: {', '.join(unknown)}.", unknown[0])
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError("You must provide a model parameter (a model name, 'name:alias' or 'name:3').", "model")
    n = raw.get("n")
    if n is not None and n != 1:
        raise OpenAIError(f"n={n!r} is not supported: this server answers one choice per request (n=1).", "n")
    for penalty in ("frequency_penalty", "presence_penalty"):
        value = raw.get(penalty)
        if value is not None and (not _is_number(value) or value != 0):
            raise OpenAIError(f"{penalty} is not supported (only 0), got {value!r}.", penalty)
    return raw


def _call(
    kind: str,
    body: dict[str, Any],
    prompt: str | None,
    messages: list[dict[str, str]] | None,
    max_tokens: int | None,
    logprobs: int | None,
) -> GenerationCall:
    temperature = _number(body, "temperature", 1.0)
    if not 0 <= temperature <= 2:
        raise OpenAIError(f"temperature must be between 0 and 2, got {temperature!r}.", "temperature")
    top_p = _number(body, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise OpenAIError(f"top_p must be above 0 and at most 1, got {top_p!r}.", "top_p")
    top_k = body.get("top_k")
    if top_k is not None and (type(top_k) is not int or top_k < 0):
        raise OpenAIError(f"top_k must be an integer of at least 0 (0: no cut), got {top_k!r}.", "top_k")
    seed = body.get("seed")
    if seed is not None and (type(seed) is not int or not 0 <= seed <= MAX_SEED):
        raise OpenAIError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}.", "seed")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise OpenAIError(f"stream must be true or false, got {stream!r}.", "stream")
    return GenerationCall(
        kind=kind, model=body["model"], prompt=prompt, messages=messages, max_tokens=max_tokens,
        temperature=float(temperature), top_p=float(top_p), top_k=top_k or 0, seed=seed, stop=_stop(body.get("stop")),
        stream=bool(stream), include_usage=_include_usage(body.get("stream_options"), bool(stream)), logprobs=logprobs,
    )  # fmt: skip


def _max_tokens(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (type(value) is not int or value < 1):
        raise OpenAIError(f"{name} must be a positive integer, got {value!r}.", name)
    return value


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value):
        raise OpenAIError(f"{name} must be a number, got {value!r}.", name)
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_token_ids(item: Any) -> bool:
    return type(item) is int or (isinstance(item, list) and all(type(token) is int for token in item))


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
        raise OpenAIError("stop must be a non-empty string or a list of them.", "stop")
    if len(items) > MAX_STOP:
        raise OpenAIError(f"stop holds {len(items)} strings; at most {MAX_STOP} are allowed.", "stop")
    return tuple(items)


def _include_usage(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise OpenAIError("stream_options is only allowed when stream is true.", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise OpenAIError("stream_options takes only include_usage (true or false).", "stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise OpenAIError(f"stream_options.include_usage must be true or false, got {include!r}.", "stream_options")
    return include


def generation_params(target: Target, call: GenerationCall) -> dict[str, Any]:
    """The sampling parameters a worker gets (messages.PARAM_NAMES), once the model is known to fit the call."""
    if target.task != TextTask.TEXT_GENERATION:
        kind = f"a {target.task} model" if target.task else f"a {target.format} (tensor) model"
        raise OpenAIError(
            f"model {call.model!r} is {kind}; completions and chat completions need a text-generation model.",
            "model",
        )
    if call.kind == CHAT and not target.chat_template:
        raise OpenAIError(
            f"model {call.model!r} has no chat template in its tokenizer, so it cannot hold a chat: "
            "use /v1/completions with a prompt.",
            "messages",
        )
    limit = target.max_tokens_limit
    max_tokens = call.max_tokens or target.max_tokens_default
    if limit and max_tokens > limit:
        param = "max_completion_tokens" if call.kind == CHAT and call.max_tokens else "max_tokens"
        raise OpenAIError(
            f"{param}={max_tokens} is over the maximum of {limit} tokens for model {call.model!r}.", param
        )
    params: dict[str, Any] = {
        "max_tokens": max_tokens, "temperature": call.temperature, "top_p": call.top_p, "top_k": call.top_k,
        "stop": list(call.stop), "logprobs": call.logprobs is not None,
    }  # fmt: skip
    if call.seed is not None:
        params["seed"] = call.seed
    return params


# --- answers ------------------------------------------------------------------------------------


@dataclass
class Shaper:
    """Builds one answer's chunks (streamed) or its whole document, in OpenAI's shapes."""

    call: GenerationCall
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    length: int = 0  # characters of text so far (completions' text_offset)
    role_sent: bool = False

    def __post_init__(self) -> None:
        if not self.id:
            self.id = ("chatcmpl-" if self.call.kind == CHAT else "cmpl-") + uuid.uuid4().hex

    def add(self, output: Output) -> dict[str, Any] | None:
        """Take one Output; the logprobs of its tokens in the answer's shape (None without logprobs)."""
        self.text.append(output.text)
        self.completion_tokens = max(self.completion_tokens, output.completion_tokens)
        if output.finish_reason is not None:
            # A cancelled sequence only ends a request its caller already left.
            self.finish_reason = "length" if output.finish_reason == "length" else "stop"
        if self.call.logprobs is None:
            self.length += len(output.text)
            return None
        values = list(output.logprobs or [])
        # A step's text belongs to its first token: a token that ends inside a character has none.
        pieces = [output.text] + [""] * (len(values) - 1) if values else []
        offsets = [self.length] * len(pieces)
        self.length += len(output.text)
        self.tokens += pieces
        self.token_logprobs += values
        self.offsets += offsets
        return self._logprobs(pieces, values, offsets)

    def _logprobs(self, pieces: list[str], values: list[float], offsets: list[int]) -> dict[str, Any]:
        if self.call.kind == CHAT:
            return {"content": [{"token": piece, "logprob": value, "bytes": list(piece.encode()), "top_logprobs": []}
                                for piece, value in zip(pieces, values, strict=True)]}  # fmt: skip
        top = [{piece: value} for piece, value in zip(pieces, values, strict=True)] if self.call.logprobs else None
        return {"tokens": pieces, "token_logprobs": values, "top_logprobs": top, "text_offset": offsets}

    def chunk(self, output: Output) -> dict[str, Any] | None:
        """Take one Output; the stream chunk it makes (None for a step with nothing to say)."""
        logprobs = self.add(output)
        reason = self.finish_reason if output.finish_reason is not None else None
        if not output.text and reason is None and not (self.call.kind == CHAT and not self.role_sent):
            return None
        if self.call.kind == CHAT:
            delta: dict[str, Any] = {"content": output.text} if output.text or reason is None else {}
            if not self.role_sent:
                delta = {"role": "assistant", "content": output.text}
                self.role_sent = True
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
            return self._envelope("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": output.text, "logprobs": logprobs, "finish_reason": reason}
        return self._envelope("text_completion", [choice])

    def usage(self, prompt_tokens: int) -> dict[str, Any]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt_tokens + self.completion_tokens}  # fmt: skip

    def usage_chunk(self, prompt_tokens: int) -> dict[str, Any]:
        """The last chunk of a stream that asked for usage: no choices."""
        kind = "chat.completion.chunk" if self.call.kind == CHAT else "text_completion"
        return {**self._envelope(kind, []), "usage": self.usage(prompt_tokens)}

    def response(self, prompt_tokens: int) -> dict[str, Any]:
        """The whole answer of a request that did not stream."""
        answer = "".join(self.text)
        logprobs = None
        if self.call.logprobs is not None:
            logprobs = self._logprobs(self.tokens, self.token_logprobs, self.offsets)
        if self.call.kind == CHAT:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": answer},
                                      "logprobs": logprobs, "finish_reason": self.finish_reason}  # fmt: skip
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": answer, "logprobs": logprobs, "finish_reason": self.finish_reason}
            kind = "text_completion"
        return {**self._envelope(kind, [choice]), "usage": self.usage(prompt_tokens)}

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.call.model, "choices": choices}


def sse(document: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON document."""
    return b"data: " + orjson.dumps(document) + b"\n\n"


__all__ = [
    "CHAT",
    "COMPLETION",
    "SSE_DONE",
    "GenerationCall",
    "OpenAIError",
    "Shaper",
    "chat_messages",
    "chat_request",
    "completion_request",
    "error_document",
    "generation_params",
    "sse",
]
