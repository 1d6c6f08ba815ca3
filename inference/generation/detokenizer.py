"""Incremental detokenization: text per generated token that never splits a UTF-8 character.

A byte-level model emits bytes, not characters: "€" may come as three tokens, and a random
model emits lone bytes that never complete. Decoding each token alone would stream three
replacement characters where the finished answer has one "€". `Detokenizer` decodes the
whole output so far and emits only what can no longer change: text up to any trailing
U+FFFD (an incomplete sequence that the next byte may complete). `flush` emits the rest.
The pieces therefore concatenate to exactly `tokenizer.decode(tokens)`.

`StopStrings` then holds back text that could be the start of a stop string and cuts the
output before the first one that appears.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class Detokenizer:
    """Streams the text of a growing token list, one safe piece per `push`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.emitted = 0

    def _decode(self) -> str:
        # Decoding the whole list keeps the result equal to a final decode by construction;
        # a Rust decode of a few hundred tokens costs microseconds.
        return str(self.tokenizer.decode(self.tokens))

    def push(self, token: int) -> str:
        """Add one token; the text that became final because of it (often "", never half a character)."""
        self.tokens.append(token)
        text = self._decode()
        stable = len(text.rstrip(REPLACEMENT))
        if stable <= self.emitted:
            return ""
        piece = text[self.emitted : stable]
        self.emitted = stable
        return piece

    def flush(self) -> str:
        """The text not emitted yet (replacement characters of bytes that never completed)."""
        text = self._decode()
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece


class StopStrings:
    """Cuts streamed text before the first stop string, holding back what may begin one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Text safe to emit after `piece`; sets `stopped` (and emits the text before it) on a stop string."""
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        self.pending += piece
        cut = min((i for i in (self.pending.find(stop) for stop in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        hold = self._partial_suffix()
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out

    def flush(self) -> str:
        """What was held back as a possible stop string's start (the output ended without one)."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out

    def _partial_suffix(self) -> int:
        """Length of the longest end of the pending text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest


__all__ = ["REPLACEMENT", "Detokenizer", "StopStrings"]
