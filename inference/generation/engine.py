"""A continuous-batching generation engine for one causal language model, in-process.

One `step()` is one decoding step for every running sequence in a single batched forward,
then the prefill of newcomers in forwards of their own (prompts of similar lengths
left-padded together, as `generate()` pads a batch; see `prefill_groups`): each emits its
first token at once and joins the batch at the next step. Finished and cancelled
sequences leave the batch between steps. Prefill per step is bounded by `prefill_tokens`
padded tokens so that a burst of prompts does not stall the running streams for long; a
prompt longer than that is read in chunks of `prefill_tokens`, one per step, in a cache
of its own (newcomers wait behind it), and joins the batch after its last chunk.

The KV cache is one `DynamicCache` for the batch, left-padded: row r holds its sequence's
keys and values right-aligned, an attention mask marks the padding and explicit position
ids keep each row's positions its own. A newcomer's cache is padded to the batch's width
(or the batch to its) and concatenated; leaving rows are dropped with an index and the
padding columns no row needs any more are cut off.

Memory budget: at most `max_sequences` run at once and the running sequences together
reserve at most `max_tokens` cache positions (prompt + max_tokens each, reserved at
admission so that a running sequence never has to be evicted). Requests beyond wait in
arrival order; `submit` raises `EngineFull` once `max_waiting` are waiting. The padded
batch cache may hold more positions than the reserved tokens (rows shorter than the
longest are padded): `stats()["cache_positions"]` reports it.

An engine is not thread-safe: one loop calls `submit`, `cancel` and `step`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F

from inference.generation.detokenizer import Detokenizer, StopStrings
from inference.generation.sampling import SamplingParams, batch_sample, token_logprobs

# A prefill forward may be this much larger (in padded tokens) than the prompts it reads.
PREFILL_SLACK = 1.25


def _dynamic_cache(config: Any) -> Any:
    """A fresh transformers DynamicCache. transformers is imported here, at the first prefill,
    not with this module: every worker, web process and model host imports the engine, and the
    library takes seconds to import."""
    from transformers import DynamicCache

    return DynamicCache(config=config)


class EngineFull(Exception):
    """The waiting queue is at its limit: the caller should answer 503/429 with Retry-After."""


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens reached
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class GenerationRequest:
    """A prompt (text, or token ids as the tokenizer gives them) and how to continue it."""

    prompt: str | Seq[int]
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class StepOutput:
    """What one sequence produced in one step: its new token(s), the text they made final, and
    a finish reason on its last step (when its text ends; a cancelled one carries no token)."""

    sequence_id: int
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[float, ...] | None = None

    @property
    def finished(self) -> bool:
        """Whether this is the sequence's last output."""
        return self.finish_reason is not None


@dataclass(eq=False)
class Sequence:
    """One request's state inside the engine."""

    id: int
    prompt_ids: list[int]
    params: SamplingParams
    detokenizer: Detokenizer
    stops: StopStrings
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False

    @property
    def reserved(self) -> int:
        """Cache positions the sequence may come to hold: its prompt and every token it may generate."""
        return len(self.prompt_ids) + self.params.max_tokens

    @property
    def length(self) -> int:
        """Tokens in its cache once its last token has been fed back: prompt + generated."""
        return len(self.prompt_ids) + len(self.tokens)


class Engine:
    """Continuous batching over `model.forward` for a Hugging Face causal LM and its fast tokenizer.

    End-of-sequence ids come from the model's generation config (else the tokenizer) unless
    `eos_token_ids` names them.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_sequences: int = 32,
        max_tokens: int = 16384,
        max_waiting: int = 256,
        prefill_tokens: int = 512,
        eos_token_ids: Iterable[int] | None = None,
    ) -> None:
        if max_sequences < 1 or max_tokens < 1 or max_waiting < 0 or prefill_tokens < 1:
            raise ValueError("max_sequences, max_tokens and prefill_tokens must be positive, max_waiting not negative")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_sequences = max_sequences
        self.max_tokens = max_tokens
        self.max_waiting = max_waiting
        self.prefill_tokens = prefill_tokens
        self.context = int(model.config.max_position_embeddings)
        self.eos_ids = frozenset(eos_token_ids) if eos_token_ids is not None else _eos_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # row r of the batch cache is running[r]
        self.cache: Any = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self.next_id = 0
        self.cancelled_waiting: list[Sequence] = []
        # A prompt longer than `prefill_tokens` is prefilled in chunks, one per step, in a
        # cache of its own; it joins the batch once its whole prompt has been read.
        self.chunked: Sequence | None = None
        self.chunked_cache: Any = None
        self.chunked_done = 0

    # -- the queue ------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> int:
        """Queue a request; its sequence id. Raises ValueError for a request that can never run
        and EngineFull when `max_waiting` requests already wait."""
        prompt = request.prompt
        ids = list(self.tokenizer(prompt)["input_ids"]) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise ValueError("the prompt is empty")
        needed = len(ids) + request.params.max_tokens
        if needed > self.context:
            raise ValueError(
                f"the prompt has {len(ids)} tokens and max_tokens is {request.params.max_tokens}: "
                f"{needed} is over the model's context of {self.context} tokens"
            )
        if needed > self.max_tokens:
            raise ValueError(f"prompt + max_tokens ({needed}) is over the engine's cache budget of {self.max_tokens}")
        if len(self.waiting) >= self.max_waiting:
            raise EngineFull(f"{len(self.waiting)} requests are waiting for this model (the limit)")
        sequence = Sequence(
            id=self.next_id,
            prompt_ids=ids,
            params=request.params,
            detokenizer=Detokenizer(self.tokenizer),
            stops=StopStrings(request.params.stop),
            generator=request.params.generator(self.device),
        )
        self.next_id += 1
        self.waiting.append(sequence)
        return sequence.id

    def cancel(self, sequence_id: int) -> bool:
        """Cancel a waiting or running sequence: it leaves at the next step (False if unknown or done)."""
        for sequence in [*self.running, *([self.chunked] if self.chunked else [])]:
            if sequence.id == sequence_id and not sequence.cancelled:
                sequence.cancelled = True
                return True
        for sequence in self.waiting:
            if sequence.id == sequence_id:
                self.waiting.remove(sequence)
                self.cancelled_waiting.append(sequence)
                return True
        return False

    def has_work(self) -> bool:
        """Whether a step would do anything."""
        return bool(self.running or self.waiting or self.cancelled_waiting or self.chunked)

    def stats(self) -> dict[str, int]:
        """Running and waiting sequences and cache use (real tokens, reserved, padded batch size)."""
        return {
            "running": len(self.running),
            "prefilling": int(self.chunked is not None),
            "waiting": len(self.waiting),
            "cached_tokens": sum(s.length for s in self.running) + self.chunked_done,
            "reserved_tokens": self._reserved(),
            "cache_positions": int(self.mask.numel()),
        }

    # -- one step -------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Decode one token for every running sequence, then prefill the newcomers that fit."""
        outputs = [self._cancelled(s) for s in self.cancelled_waiting]
        self.cancelled_waiting = []
        gone = [row for row, s in enumerate(self.running) if s.cancelled]
        outputs += [self._cancelled(self.running[row]) for row in gone]
        self._drop(gone)
        if self.chunked is not None and self.chunked.cancelled:
            outputs.append(self._cancelled(self.chunked))
            self.chunked, self.chunked_cache, self.chunked_done = None, None, 0
        if self.running:
            outputs += self._decode()
        outputs += self._admit()
        return outputs

    def _decode(self) -> list[StepOutput]:
        last = torch.tensor([[s.tokens[-1]] for s in self.running], device=self.device)
        positions = torch.tensor([[s.length - 1] for s in self.running], device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.running), 1))], dim=1)
        out = self.model(
            input_ids=last,
            attention_mask=self.mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
        )
        outputs = self._advance(self.running, out.logits[:, -1, :])
        self._drop([row for row, output in enumerate(outputs) if output.finished])
        return outputs

    def _admit(self) -> list[StepOutput]:
        """Prefill the waiting sequences that fit, in one left-padded forward; they emit their first token."""
        if self.chunked is not None:
            return self._prefill_chunk()
        newcomers: list[Sequence] = []
        groups: list[PrefillGroup] = []  # how the newcomers are prefilled (recut as each one is added)
        reserved = self._reserved()
        while self.waiting and len(self.running) + len(newcomers) < self.max_sequences:
            sequence = self.waiting[0]
            if reserved + sequence.reserved > self.max_tokens:
                break
            if not newcomers and len(sequence.prompt_ids) > self.prefill_tokens:
                self.chunked = self.waiting.popleft()
                self.chunked_cache = _dynamic_cache(self.model.config)
                return self._prefill_chunk()
            # Padded tokens bound the prefill's cost, so that running streams are not stalled for long.
            candidate = prefill_groups([len(s.prompt_ids) for s in newcomers] + [len(sequence.prompt_ids)])
            if sum(group.width * len(group.rows) for group in candidate) > self.prefill_tokens:
                break
            newcomers.append(self.waiting.popleft())
            reserved += sequence.reserved
            groups = candidate
        outputs: list[StepOutput] = []
        for group in groups:
            outputs += self._prefill([newcomers[row] for row in group.rows], group.width)
        return outputs

    def _prefill(self, newcomers: list[Sequence], width: int) -> list[StepOutput]:
        """One left-padded forward over the prompts of `newcomers`; they emit their first token and join."""
        mask = torch.tensor(
            [[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in newcomers], device=self.device
        )
        ids = torch.tensor([[0] * (width - len(s.prompt_ids)) + s.prompt_ids for s in newcomers], device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        # The cache is filled in place (transformers 5 names the argument `cache`).
        cache = _dynamic_cache(self.model.config)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
        )
        outputs = self._advance(newcomers, out.logits[:, -1, :])
        first = len(self.running)
        self._join(newcomers, cache, mask)
        self._drop([first + row for row, output in enumerate(outputs) if output.finished])
        return outputs

    def _prefill_chunk(self) -> list[StepOutput]:
        """Read the next `prefill_tokens` of the chunked prompt; at its end, its first token and it joins."""
        sequence, done = self.chunked, self.chunked_done
        if sequence is None:
            return []
        chunk = sequence.prompt_ids[done : done + self.prefill_tokens]
        end = done + len(chunk)
        out = self.model(
            input_ids=torch.tensor([chunk], device=self.device),
            attention_mask=torch.ones((1, end), dtype=torch.long, device=self.device),
            position_ids=torch.arange(done, end, device=self.device).unsqueeze(0),
            cache=self.chunked_cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if end < len(sequence.prompt_ids):
            self.chunked_done = end
            return []
        cache = self.chunked_cache
        self.chunked, self.chunked_cache, self.chunked_done = None, None, 0
        outputs = self._advance([sequence], out.logits[:, -1, :])
        first = len(self.running)
        self._join([sequence], cache, torch.ones((1, end), dtype=torch.long, device=self.device))
        self._drop([first] if outputs[0].finished else [])
        return outputs

    def _reserved(self) -> int:
        """Cache positions reserved by the running sequences and a prompt being prefilled in chunks."""
        return sum(s.reserved for s in self.running) + (self.chunked.reserved if self.chunked else 0)

    def _advance(self, sequences: list[Sequence], logits: torch.Tensor) -> list[StepOutput]:
        """Sample one token per sequence from its logits row and turn it into outputs."""
        tokens = batch_sample(logits, [s.params for s in sequences], [s.generator for s in sequences])
        wanted = any(s.params.logprobs for s in sequences)
        logprobs = token_logprobs(logits, tokens) if wanted else [0.0] * len(tokens)
        return [self._emit(s, t, lp) for s, t, lp in zip(sequences, tokens, logprobs, strict=True)]

    def _emit(self, sequence: Sequence, token: int, logprob: float) -> StepOutput:
        sequence.tokens.append(token)
        finish: FinishReason | None = None
        text = ""
        if token in self.eos_ids:
            finish = FinishReason.STOP
        else:
            text = sequence.stops.feed(sequence.detokenizer.push(token))
            if sequence.stops.stopped:
                finish = FinishReason.STOP
        if finish is None and len(sequence.tokens) >= sequence.params.max_tokens:
            finish = FinishReason.LENGTH
        if finish is not None and not sequence.stops.stopped:
            # Bytes that never completed a character end the text as replacement characters,
            # exactly as a final decode shows them; a stop string may still complete in them.
            text += sequence.stops.feed(sequence.detokenizer.flush())
            text += sequence.stops.flush()
            if sequence.stops.stopped:
                finish = FinishReason.STOP
        return StepOutput(
            sequence_id=sequence.id,
            token_ids=(token,),
            text=text,
            finish_reason=finish,
            prompt_tokens=len(sequence.prompt_ids),
            completion_tokens=len(sequence.tokens),
            logprobs=(logprob,) if sequence.params.logprobs else None,
        )

    def _cancelled(self, sequence: Sequence) -> StepOutput:
        return StepOutput(
            sequence_id=sequence.id,
            token_ids=(),
            text="",
            finish_reason=FinishReason.CANCELLED,
            prompt_tokens=len(sequence.prompt_ids),
            completion_tokens=len(sequence.tokens),
            logprobs=() if sequence.params.logprobs else None,
        )

    # -- the batch cache ------------------------------------------------------------------

    def _join(self, sequences: list[Sequence], cache: Any, mask: torch.Tensor) -> None:
        """Append prefilled sequences (their cache and mask rows) to the batch, left-padding the narrower side."""
        if not self.running:
            self.cache, self.mask, self.running = cache, mask, list(sequences)
            return
        width, length = self.mask.shape[1], mask.shape[1]
        wide = max(width, length)
        for batch_layer, new_layer in zip(self.cache.layers, cache.layers, strict=True):
            batch_layer.keys = torch.cat([_left_pad(batch_layer.keys, wide), _left_pad(new_layer.keys, wide)])
            batch_layer.values = torch.cat([_left_pad(batch_layer.values, wide), _left_pad(new_layer.values, wide)])
        self.mask = torch.cat([F.pad(self.mask, (wide - width, 0)), F.pad(mask, (wide - length, 0))])
        self.running += sequences

    def _drop(self, rows: list[int]) -> None:
        """Remove batch rows, then the leading padding columns that no remaining row uses."""
        if not rows:
            return
        leaving = set(rows)
        keep = [row for row in range(len(self.running)) if row not in leaving]
        self.running = [self.running[row] for row in keep]
        if not keep:
            self.cache = None
            self.mask = self.mask.new_zeros((0, 0))
            return
        index = torch.tensor(keep, device=self.device)
        self.mask = self.mask[index]
        unused = int((self.mask.cumsum(dim=1) == 0).sum(dim=1).min())
        self.mask = self.mask[:, unused:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, unused:, :]
            layer.values = layer.values[index, :, unused:, :]


@dataclass(frozen=True)
class PrefillGroup:
    """Newcomers prefilled in one forward: their indices (shortest prompt first) and the padded width."""

    rows: list[int]
    width: int


def prefill_groups(lengths: list[int]) -> list[PrefillGroup]:
    """Cut prompts of `lengths` into forwards of similar lengths, so that little of a prefill is padding.

    Sorted by length, a new forward starts where padding to the longer prompt would make the
    forward PREFILL_SLACK times larger than its prompts: on a CPU a forward costs about its
    padded tokens, and a burst of short and long prompts padded together cost up to twice
    what they hold.
    """
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    groups: list[PrefillGroup] = []
    rows: list[int] = []
    for index in order:
        width = lengths[index]
        if rows and width * (len(rows) + 1) > PREFILL_SLACK * (sum(lengths[row] for row in rows) + width):
            groups.append(PrefillGroup(rows, lengths[rows[-1]]))
            rows = []
        rows.append(index)
    if rows:
        groups.append(PrefillGroup(rows, lengths[rows[-1]]))
    return groups


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Keys or values [batch, heads, length, dim] zero-padded on the left to `width` positions."""
    return F.pad(tensor, (0, 0, width - tensor.shape[2], 0))


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The end-of-sequence ids of the model's generation config, else the tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


__all__ = [
    "Engine",
    "EngineFull",
    "FinishReason",
    "GenerationRequest",
    "PrefillGroup",
    "Sequence",
    "StepOutput",
    "prefill_groups",
]
