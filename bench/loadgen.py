"""The generation benchmark's load generator: streaming OpenAI `/v1/completions` over raw asyncio.

One client for every server (the portal, `transformers serve`), standard library only: an
HTTP/1.1 request per stream on its own connection, the response read as it arrives
(chunked, Content-Length or close-delimited), Server-Sent Events parsed from it, and the
arrival time of every event kept. A stream ends at `data: [DONE]` or at the end of the
response (`transformers serve` sends no [DONE]).

Per request: time to first token (the first event whose choice carries text), output
tokens (`usage.completion_tokens` of the last chunk when the server sends it, else the
chunks that carried text), the time between the first and the last token, and the gaps
between text chunks. A level runs `requests` streams at `concurrency` (closed loop: each
of `concurrency` clients sends its next request when its stream ends) and stops waiting
after `cap_seconds`; streams cut there count as unfinished, their tokens up to the cut as
received.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as expected."""


# --- parsing (pure) ---------------------------------------------------------------------------


class ChunkedDecoder:
    """Incremental decoder of `Transfer-Encoding: chunked` bodies."""

    def __init__(self) -> None:
        self.buffer = b""
        self.remaining = 0  # bytes left of the current chunk's data
        self.state = "size"  # size | data | crlf | trailer | done
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        """The body bytes found in `data` (with what earlier calls left over)."""
        self.buffer += data
        out = bytearray()
        while True:
            if self.state == "size":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                line = self.buffer[:end].split(b";", 1)[0].strip()
                self.buffer = self.buffer[end + 2 :]
                try:
                    self.remaining = int(line, 16)
                except ValueError as error:
                    raise ProtocolError(f"bad chunk size {line!r}") from error
                self.state = "data" if self.remaining else "trailer"
            elif self.state == "data":
                if not self.buffer:
                    break
                piece = self.buffer[: self.remaining]
                out += piece
                self.buffer = self.buffer[len(piece) :]
                self.remaining -= len(piece)
                if self.remaining == 0:
                    self.state = "crlf"
            elif self.state == "crlf":
                if len(self.buffer) < 2:
                    break
                if self.buffer[:2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                self.buffer = self.buffer[2:]
                self.state = "size"
            elif self.state == "trailer":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
                if not line:
                    self.state, self.finished = "done", True
            else:
                break
        return bytes(out)


class SSEParser:
    """Incremental Server-Sent Events parser: the `data` of each complete event.

    Lines end in LF, CRLF or CR; an event ends at an empty line; its `data:` lines are
    joined with LF; comments (`:`) and other fields (`event:`, `id:`, `retry:`) are skipped.
    """

    def __init__(self) -> None:
        self.buffer = ""
        self.data: list[str] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> list[str]:
        self.buffer += self.decoder.decode(data)
        events: list[str] = []
        while True:
            line, found = _next_line(self.buffer)
            if not found:
                break
            self.buffer = self.buffer[found:]
            if line == "":
                if self.data:
                    events.append("\n".join(self.data))
                    self.data = []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                if name == "data":
                    self.data.append(value.removeprefix(" "))
        return events

    def close(self) -> list[str]:
        """An event the stream ended without its blank line (lenient, as browsers are not)."""
        events = self.feed(b"\n\n") if (self.buffer or self.data) else []
        return events


def _next_line(buffer: str) -> tuple[str, int]:
    """The first complete line of `buffer` and where the rest starts (0 when no line is complete)."""
    lf, cr = buffer.find("\n"), buffer.find("\r")
    if cr < 0 or (0 <= lf < cr):
        return ("", 0) if lf < 0 else (buffer[:lf], lf + 1)
    if cr + 1 == len(buffer):
        return "", 0  # a CR at the end may be the first half of a CRLF
    return buffer[:cr], cr + (2 if buffer[cr + 1] == "\n" else 1)


def head_parse(head: bytes) -> tuple[int, dict[str, str]]:
    """The status code and (lower-cased) headers of a response head, without its blank line."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


# --- one stream ---------------------------------------------------------------------------------


@dataclass
class Stream:
    """What one streamed completion delivered, with the arrival time of each part."""

    status: int = 0
    started: float = 0.0
    ended: float = 0.0
    first_token: float | None = None
    last_token: float | None = None
    text_chunks: int = 0
    chunk_gaps: list[float] = field(default_factory=list)
    usage_tokens: int | None = None
    finish_reason: str | None = None
    done_marker: bool = False
    text: str = ""
    error: str | None = None
    body: bytes = b""  # the body of a non-2xx answer

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.text_chunks

    @property
    def finished(self) -> bool:
        return self.error is None and self.finish_reason is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def inter_token(self) -> float | None:
        """Mean time between tokens after the first: (last - first) / (tokens - 1)."""
        if self.first_token is None or self.last_token is None or self.tokens < 2:
            return None
        return (self.last_token - self.first_token) / (self.tokens - 1)

    def event(self, data: str, now: float) -> None:
        """Take one SSE `data` payload that arrived at `now`."""
        if data.strip() == "[DONE]":
            self.done_marker = True
            return
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            self.error = f"not JSON: {data[:120]!r}"
            return
        if not isinstance(chunk, dict):
            self.error = f"not an object: {data[:120]!r}"
            return
        if "error" in chunk:
            self.error = f"error event: {json.dumps(chunk['error'])[:200]}"
            return
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]
        for choice in chunk.get("choices") or []:
            text = choice.get("text")
            if text is None:  # chat chunks
                text = (choice.get("delta") or {}).get("content")
            if text:
                if self.last_token is not None:
                    self.chunk_gaps.append(now - self.last_token)
                if self.first_token is None:
                    self.first_token = now
                self.last_token = now
                self.text_chunks += 1
                self.text += text
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]


async def stream_completion(
    host: str, port: int, path: str, body: dict[str, Any], headers: dict[str, str], timeout: float
) -> Stream:
    """POST `body` and read the SSE answer to its end (or `timeout` seconds, or cancellation)."""
    stream = Stream(started=time.perf_counter())
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            payload = json.dumps(body).encode()
            lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
                     "Accept: text/event-stream", f"Content-Length: {len(payload)}", "Connection: close",
                     *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
            await writer.drain()
            await _read_response(reader, stream)
    except TimeoutError:
        stream.error = stream.error or f"timed out after {timeout:.0f} s"
    except asyncio.CancelledError:
        stream.error = stream.error or "cut at the level's cap"
    except (OSError, ProtocolError, asyncio.IncompleteReadError) as error:
        stream.error = stream.error or f"{type(error).__name__}: {error}"
    finally:
        stream.ended = time.perf_counter()
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    if stream.error is None and stream.status == 200 and stream.finish_reason is None:
        stream.error = "stream ended without a finish_reason"
    return stream


async def _read_response(reader: asyncio.StreamReader, stream: Stream) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    stream.status, headers = head_parse(head[:-4])
    if stream.status != 200:
        stream.body = await reader.read(64 * 1024)
        stream.error = f"HTTP {stream.status}: {stream.body[:200]!r}"
        return
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = int(headers["content-length"]) if "content-length" in headers and not chunked else None
    decoder = ChunkedDecoder() if chunked else None
    parser = SSEParser()
    received = 0
    while True:
        data = await reader.read(65536)
        now = time.perf_counter()
        if not data:
            break
        if decoder is not None:
            data = decoder.feed(data)
        received += len(data)
        for event in parser.feed(data):
            stream.event(event, now)
            if stream.done_marker or stream.error:
                return
        if (decoder is not None and decoder.finished) or (length is not None and received >= length):
            break
    for event in parser.close():
        stream.event(event, time.perf_counter())


# --- a level of load ----------------------------------------------------------------------------


@dataclass
class Level:
    """One concurrency level against one server: every stream and the wall time."""

    concurrency: int
    streams: list[Stream]
    seconds: float

    @property
    def ok(self) -> list[Stream]:
        return [s for s in self.streams if s.finished]

    @property
    def errors(self) -> int:
        return sum(1 for s in self.streams if s.error is not None and not s.error.startswith("cut"))

    @property
    def unfinished(self) -> int:
        return sum(1 for s in self.streams if s.error is not None and s.error.startswith("cut"))

    @property
    def tokens(self) -> int:
        """Output tokens received (usage of finished streams; chunks of streams cut short)."""
        return sum(s.tokens if s.finished else s.text_chunks for s in self.streams)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        ttfts = [s.ttft for s in self.streams if s.ttft is not None]
        inter = [s.inter_token for s in self.ok if s.inter_token is not None]
        gaps = [gap for s in self.ok for gap in s.chunk_gaps]
        counts = [s.tokens for s in self.ok]
        return {
            "concurrency": self.concurrency,
            "requests": len(self.streams),
            "finished": len(self.ok),
            "errors": self.errors,
            "unfinished": self.unfinished,
            "seconds": round(self.seconds, 3),
            "output_tokens": self.tokens,
            "tokens_per_second": round(self.tokens_per_second, 2),
            "tokens_per_request_min": min(counts, default=0),
            "tokens_per_request_max": max(counts, default=0),
            "text_chunks_per_request_min": min((s.text_chunks for s in self.ok), default=0),
            "ttft_p50_ms": _ms(percentile(ttfts, 50)),
            "ttft_p99_ms": _ms(percentile(ttfts, 99)),
            "inter_token_p50_ms": _ms(percentile(inter, 50)),
            "chunk_gap_p50_ms": _ms(percentile(gaps, 50)),
            "done_marker": sum(1 for s in self.ok if s.done_marker),
            "first_errors": sorted({s.error for s in self.streams if s.error and not s.error.startswith("cut")})[:3],
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation between closest ranks, as numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


async def run_level(
    host: str, port: int, path: str, bodies: Iterator[dict[str, Any]], *, concurrency: int, requests: int,
    headers: dict[str, str], cap_seconds: float, timeout: float = 300.0,
) -> Level:  # fmt: skip
    """`requests` streams, `concurrency` at a time, cut after `cap_seconds`."""
    pending = list(range(requests))
    streams: list[Stream] = []
    cut = asyncio.Event()

    async def client() -> None:
        while pending and not cut.is_set():
            pending.pop()
            streams.append(await stream_completion(host, port, path, next(bodies), headers, timeout))

    started = time.perf_counter()
    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    _, late = await asyncio.wait(tasks, timeout=cap_seconds)
    cut.set()
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late)
    seconds = time.perf_counter() - started
    return Level(concurrency, streams, seconds)
