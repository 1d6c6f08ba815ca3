"""Incremental detokenization: text per generated token that never splits a UTF-8 character.

A byte-level model emits bytes, not characters: "€" may come as three tokens, and a random
model emits lone bytes that never complete. Decoding each token alone would stream three
replacement characters where the finished answer has one "€". `Detokenizer` emits text
only once it can no longer change: never while it ends in U+FFFD (an incomplete sequence
that the next byte may complete). `flush` emits the rest.
The pieces therefore concatenate to exactly `tokenizer.decode(tokens)`.

`StopStrings` then holds back text that could be the start of a stop string and cuts the
output before the first one that appears.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"


class Detokenizer:
    """Streams the text of a growing token list, one safe piece per `push`.

    Each push decodes a short window, not the whole output: the tokens since the last
    point where the text was complete, plus the ones before that point back to the
    previous one (context for decoders that treat a leading space specially, such as
    SentencePiece's "▁"). At such points the byte-level text splits on a character
    boundary, so the pieces join to the full decode. Decoding everything per token cost
    9 % of a tiny model's batch-32 step at 64 tokens, and it grows with the output.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        # A fast tokenizer's decode is its Rust backend's plus an optional clean-up of
        # spaces; without the clean-up, calling the backend directly is 7x cheaper (0.8 µs
        # against 6 µs for 8 tokens, measured) and gives the same text.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        cleans = getattr(tokenizer, "clean_up_tokenization_spaces", True)
        self.backend = backend if backend is not None and cleans is False else None
        self.tokens: list[int] = []
        self.pieces: list[str] = []
        self.start = 0  # the window's first token
        self.complete = 0  # the last token count at which all text was emitted and whole
        self.offset = 0  # characters of the window's text already emitted

    def _decode(self, tokens: list[int]) -> str:
        if self.backend is not None:
            return str(self.backend.decode(tokens, skip_special_tokens=False))
        return str(self.tokenizer.decode(tokens))

    def push(self, token: int) -> str:
        """Add one token; the text that became final because of it (often "", never half a character)."""
        self.tokens.append(token)
        text = self._decode(self.tokens[self.start :])
        stable = len(text.rstrip(REPLACEMENT))
        piece = text[self.offset : stable] if stable > self.offset else ""
        self.offset = max(self.offset, stable)
        if stable == len(text):
            if self.complete > self.start:
                self.start = self.complete
                self.offset = len(self._decode(self.tokens[self.start :]))
            self.complete = len(self.tokens)
        if piece:
            self.pieces.append(piece)
        return piece

    def flush(self) -> str:
        """The text not emitted yet (replacement characters of bytes that never completed)."""
        text = self._decode(self.tokens)
        emitted = "".join(self.pieces)
        if not text.startswith(emitted):
            # A decoder whose text depends on more than the window: the stream already differs.
            logger.warning("incremental text diverged from the full decode after %d tokens", len(self.tokens))
        piece = text[len(emitted) :]
        self.pieces = [text]
        self.start = self.complete = len(self.tokens)
        self.offset = 0
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
