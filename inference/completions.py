"""Batch generation jobs: the file of prompts, the engine run over it in order, the result lines.

A job on a text-generation version takes JSON lines, one request per line:
`{"prompt": "..."}` or `{"messages": [{"role": "user", "content": "..."}, ...]}`, each with
optional sampling settings (max_tokens, temperature, top_p, top_k, seed, stop). The web
process checks every line before it stores anything (`prompts_read`) and stores them in a
canonical form of its own, every setting resolved, so the worker never parses user JSON.

The worker feeds the lines to one continuous-batching `Engine` (`CompletionRows`): up to
`max_sequences` in flight at once, sequences joining and leaving between decoding steps,
while the tracked-run loop asks for the results in row order, chunk by chunk. A line that
cannot run (a prompt over the context, chat messages for a model without a chat template)
gets an error line of its own; the job goes on.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import IO, Any

from core.errors import InvalidInput
from inference.generation import Engine, GenerationRequest, SamplingParams
from inference.generation.sampling import MAX_STOP_STRINGS
from inference.runs.arrays import FILE
from inference.runs.loop import RunStopped

ROLES = ("system", "user", "assistant")
SETTINGS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")
# A job holds at most this many prompts (the byte limit of uploads applies as well).
MAX_PROMPTS = 100_000
# The first this many problems of a refused file are named, with their line numbers.
MAX_PROBLEMS = 5


@dataclass(frozen=True)
class Defaults:
    """What a line's settings fall back to, and the most max_tokens a line may ask for."""

    max_tokens: int
    max_tokens_limit: int
    temperature: float = 1.0


class LineError(ValueError):
    """One line of a prompts file is not a request this job can take."""


# --- the web side: checking a file -------------------------------------------------------------


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LineError(f"{name!r} must be a number, not {json.dumps(value)}")
    return float(value)


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LineError(f"{name!r} must be an integer, not {json.dumps(value)}")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise LineError(f"{name} must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LineError(f"{name} holds a lone surrogate, which is not valid Unicode text") from None
    return value


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise LineError('\'messages\' must be a non-empty list of {"role", "content"} objects')
    messages = []
    for index, message in enumerate(value):
        where = f"message {index}"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise LineError(f"{where} must be an object with exactly the keys 'role' and 'content'")
        if message["role"] not in ROLES:
            raise LineError(f"{where} has an unknown role {json.dumps(message['role'])}; use one of {', '.join(ROLES)}")
        messages.append({"role": message["role"], "content": _text(message["content"], f"{where}'s content")})
    return messages


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) and stop for stop in stops):
        raise LineError("'stop' must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP_STRINGS:
        raise LineError(f"'stop' takes at most {MAX_STOP_STRINGS} strings")
    return [_text(stop, "'stop'") for stop in stops]


def line_check(line: Any, defaults: Defaults) -> dict[str, Any]:
    """The canonical request of one parsed line (every setting resolved); LineError says what is wrong."""
    if not isinstance(line, dict):
        raise LineError(f"must be a JSON object with 'prompt' or 'messages', not {type(line).__name__}")
    unknown = sorted(set(line) - {"prompt", "messages", *SETTINGS})
    if unknown:
        raise LineError(f"unknown key {unknown[0]!r}; a line takes 'prompt' or 'messages' and {', '.join(SETTINGS)}")
    if ("prompt" in line) == ("messages" in line):
        raise LineError("needs exactly one of 'prompt' (a text) or 'messages' (a chat)")
    request: dict[str, Any] = (
        {"prompt": _text(line["prompt"], "'prompt'")} if "prompt" in line else {"messages": _messages(line["messages"])}
    )
    max_tokens = _integer(line.get("max_tokens", defaults.max_tokens), "max_tokens")
    if not 1 <= max_tokens <= defaults.max_tokens_limit:
        raise LineError(f"'max_tokens' must be from 1 to {defaults.max_tokens_limit} for this model, not {max_tokens}")
    seed = line.get("seed")
    params = {
        "max_tokens": max_tokens,
        "temperature": _number(line.get("temperature", defaults.temperature), "temperature"),
        "top_p": _number(line.get("top_p", 1.0), "top_p"),
        "top_k": _integer(line.get("top_k", 0), "top_k"),
        "seed": None if seed is None else _integer(seed, "seed"),
        "stop": _stop(line["stop"]) if "stop" in line else [],
    }
    try:
        sampling_params(params)
    except ValueError as exc:
        raise LineError(f"{exc}") from None
    request["params"] = params
    return request


def prompts_read(stream: Iterable[bytes], defaults: Defaults) -> list[dict[str, Any]]:
    """The canonical requests of a prompts file; InvalidInput names the first problems by line number.

    Blank lines are skipped (a result's `index` counts requests, not lines).
    """
    requests: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        if len(requests) >= MAX_PROMPTS:
            raise InvalidInput(f"The file holds more than {MAX_PROMPTS} prompts (the limit of one job); split it.",
                               field=FILE)  # fmt: skip
        try:
            line = json.loads(raw)
        except ValueError as exc:
            detail = f"{exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else str(exc)
            problems.append(f"line {number} is not valid JSON: {detail}")
        else:
            try:
                requests.append(line_check(line, defaults))
            except LineError as exc:
                problems.append(f"line {number}: {exc}")
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        more = " (and maybe more; the check stops there)" if len(problems) >= MAX_PROBLEMS else ""
        raise InvalidInput(f"The prompts file has errors: {'; '.join(problems)}{more}.", field=FILE)
    if not requests:
        raise InvalidInput("The file has no rows: it holds no JSON lines.", field=FILE)
    return requests


def prompts_dump(requests: list[dict[str, Any]]) -> bytes:
    """The stored form of checked requests: one canonical JSON object per line."""
    return b"".join(json.dumps(request, ensure_ascii=False).encode() + b"\n" for request in requests)


def prompts_load(stream: IO[bytes]) -> list[dict[str, Any]]:
    """The requests stored by `prompts_dump`."""
    return [json.loads(line) for line in stream if line.strip()]


# --- the worker side: running them ------------------------------------------------------------


def sampling_params(params: dict[str, Any]) -> SamplingParams:
    """The engine's settings of a canonical request's `params`; ValueError when one is out of range."""
    return SamplingParams(
        max_tokens=params["max_tokens"],
        temperature=params["temperature"],
        top_p=params["top_p"],
        top_k=params["top_k"],
        seed=params["seed"],
        stop=tuple(params["stop"]),
    )


def generation_request(tokenizer: Any, request: dict[str, Any]) -> GenerationRequest:
    """What the engine runs for a canonical request; LineError when it cannot run on this model.

    A chat goes through the tokenizer's chat template with the assistant's turn opened; the
    template writes the special tokens itself, so none are added when it is tokenized.
    """
    params = sampling_params(request["params"])
    if "prompt" in request:
        return GenerationRequest(request["prompt"], params)
    if not getattr(tokenizer, "chat_template", None):
        raise LineError("this model has no chat template; send a 'prompt' instead of 'messages'")
    try:
        text = tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja2's TemplateError (a template that refuses a role order) and friends
        raise LineError(f"the chat template refused these messages: {exc}") from None
    return GenerationRequest(list(tokenizer(text, add_special_tokens=False)["input_ids"]), params)


def completion_line(
    index: int, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The result line of an answered request."""
    return {
        "index": index,
        "completion": text,
        "finish_reason": finish_reason,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


def error_line(index: int, message: str) -> dict[str, Any]:
    """The result line of a request that could not run (the job goes on)."""
    return {"index": index, "error": {"message": message}}


@dataclass
class _Flight:
    row: int
    pieces: list[str]


class CompletionRows:
    """Runs a job's requests through one engine and hands their result lines out in row order.

    `rows(start, stop)` steps the engine until rows start..stop are all done, keeping it fed
    with later rows meanwhile (up to the engine's `max_sequences` in flight, and no further
    than `lookahead` rows past `stop`), so a long completion does not hold the batch back.
    """

    def __init__(
        self,
        engine: Engine,
        requests: list[dict[str, Any]],
        *,
        first: int = 0,
        lookahead: int | None = None,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.engine = engine
        self.requests = requests
        self.next_row = first
        self.lookahead = lookahead if lookahead is not None else 4 * engine.max_sequences
        # Held around each submit (the tokenizer) and step (the model): the worker's own
        # generation loop may use the same model in another thread.
        self.lock = lock if lock is not None else nullcontext()
        self.flights: dict[int, _Flight] = {}
        self.done: dict[int, dict[str, Any]] = {}
        self.steps = 0

    def _fill(self, stop: int) -> None:
        """Submit rows while there is room in flight, up to `lookahead` rows past `stop`."""
        horizon = min(len(self.requests), stop + self.lookahead)
        while self.next_row < horizon and len(self.flights) < self.engine.max_sequences:
            row = self.next_row
            self.next_row += 1
            try:
                with self.lock:
                    sequence = self.engine.submit(generation_request(self.engine.tokenizer, self.requests[row]))
            except ValueError as exc:  # LineError, or the engine's over-context and over-budget refusals
                self.done[row] = error_line(row, str(exc))
                continue
            self.flights[sequence] = _Flight(row, [])

    def rows(
        self, start: int, stop: int, alive: Callable[[], bool] = lambda: True, every: float = 0.5
    ) -> list[dict[str, Any]]:
        """The result lines of rows start..stop, in order; RunStopped once `alive()` says no
        (it is asked at most every `every` seconds, between two decoding steps)."""
        checked = time.monotonic()
        while True:
            self._fill(stop)
            if all(row in self.done for row in range(start, stop)):
                return [self.done.pop(row) for row in range(start, stop)]
            if time.monotonic() - checked >= every:
                if not alive():
                    raise RunStopped
                checked = time.monotonic()
            with self.lock:
                outputs = self.engine.step()
            for output in outputs:
                flight = self.flights[output.sequence_id]
                flight.pieces.append(output.text)
                if output.finished:
                    del self.flights[output.sequence_id]
                    self.done[flight.row] = completion_line(
                        flight.row, "".join(flight.pieces), str(output.finish_reason),
                        output.prompt_tokens, output.completion_tokens,
                    )  # fmt: skip
            self.steps += 1


def line_tokens(lines: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Prompt and completion tokens of result lines (error lines count none)."""
    prompt = completion = 0
    for line in lines:
        usage = line.get("usage")
        if usage:
            prompt += usage["prompt_tokens"]
            completion += usage["completion_tokens"]
    return prompt, completion


__all__ = [
    "MAX_PROMPTS",
    "ROLES",
    "CompletionRows",
    "Defaults",
    "LineError",
    "completion_line",
    "error_line",
    "generation_request",
    "line_check",
    "line_tokens",
    "prompts_dump",
    "prompts_load",
    "prompts_read",
    "sampling_params",
]
