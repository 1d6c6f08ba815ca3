"""Per-request sampling inside a shared batch: each row of the logits gets its own settings.

Greedy rows (temperature 0) take one argmax over the whole batch; the others are tempered,
cut to their top-k and nucleus (top-p), and drawn with their own `torch.Generator`, so a
request's seed reproduces its output whatever else shares the batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

MAX_STOP_STRINGS = 4


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it ends."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: the whole vocabulary
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, not {self.max_tokens!r}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be between 0 and 2, not {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be above 0 and at most 1, not {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, not {self.top_k!r}")
        if len(self.stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings")

    @property
    def greedy(self) -> bool:
        """Whether the request takes the most likely token (temperature 0)."""
        return self.temperature == 0.0

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """A generator of its own on `device` for a sampled request (None for greedy), seeded by `seed` or at random."""
        if self.greedy:
            return None
        seed = self.seed if self.seed is not None else random.getrandbits(63)
        return torch.Generator(device=device).manual_seed(seed)


def row_sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row of logits (shape [vocabulary]) under `params`."""
    if params.greedy:
        return int(logits.argmax())
    scores = logits.float() / params.temperature
    if 0 < params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        # Keep the smallest head whose mass reaches top_p: drop a token once the mass before it does.
        drop = (cumulative - torch.softmax(ordered, dim=-1)) >= params.top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    probabilities = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probabilities, 1, generator=generator))


def batch_sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """One token per row of `logits` (shape [batch, vocabulary]), each row under its own params."""
    tokens = logits.argmax(dim=-1).tolist()
    for row, (row_params, generator) in enumerate(zip(params, generators, strict=True)):
        if not row_params.greedy:
            tokens[row] = row_sample(logits[row], row_params, generator)
    return [int(token) for token in tokens]


def token_logprobs(logits: torch.Tensor, tokens: list[int]) -> list[float]:
    """The model's log-probability of each row's chosen token (before temperature and cuts)."""
    chosen = logits.gather(1, torch.tensor(tokens, device=logits.device).unsqueeze(1)).squeeze(1).float()
    return (chosen - torch.logsumexp(logits.float(), dim=-1)).tolist()


__all__ = ["MAX_STOP_STRINGS", "SamplingParams", "batch_sample", "row_sample", "token_logprobs"]
