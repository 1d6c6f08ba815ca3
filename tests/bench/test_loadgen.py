"""The generation benchmark's load generator: its HTTP/SSE parsing and one stream end to end
against an in-process asyncio server (no [DONE], as `transformers serve`; and with [DONE])."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench.loadgen import ChunkedDecoder, ProtocolError, SSEParser, Stream, head_parse, percentile, run_level


def chunk(text: str, finish: str | None = None, usage: dict | None = None) -> str:
    document: dict = {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    if usage is not None:
        document["usage"] = usage
    return f"data: {json.dumps(document)}\n\n"


def test_sse_parser_splits_events_across_reads_and_line_endings():
    parser = SSEParser()
    raw = (
        ": comment\r\nevent: message\r\ndata: one\r\n\r\ndata: two\ndata: lines\n\ndata: three\r\rdata: é\n\n"
    ).encode()
    events: list[str] = []
    for i in range(len(raw)):  # one byte at a time: splits CRLF pairs and the two bytes of "é"
        events += parser.feed(raw[i : i + 1])
    assert events == ["one", "two\nlines", "three", "é"]
    assert parser.feed(b"data: unterminated") == []
    assert parser.close() == ["unterminated"]


def test_chunked_decoder_reassembles_and_detects_the_end():
    body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    decoder = ChunkedDecoder()
    out = b"".join(decoder.feed(body[i : i + 3]) for i in range(0, len(body), 3))
    assert out == b"hello, world"
    assert decoder.finished
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(b"zz\r\n")


def test_head_parse():
    status, headers = head_parse(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Type: x")
    assert status == 429
    assert headers == {"retry-after": "3", "content-type": "x"}
    with pytest.raises(ProtocolError):
        head_parse(b"SSH-2.0 hello")


def test_stream_counts_usage_tokens_ttft_and_gaps():
    stream = Stream(started=10.0)
    stream.event(json.dumps({"choices": [{"index": 0, "text": "", "finish_reason": None}]}), 10.5)
    stream.event(json.dumps({"choices": [{"index": 0, "text": "a", "finish_reason": None}]}), 11.0)
    stream.event(json.dumps({"choices": [{"index": 0, "text": "b", "finish_reason": None}]}), 11.5)
    stream.event(json.dumps({"choices": [{"index": 0, "text": "c", "finish_reason": "length"}]}), 13.0)
    assert stream.tokens == 3
    assert (stream.ttft, stream.inter_token, stream.chunk_gaps) == (1.0, 1.0, [0.5, 1.5])
    stream.event(json.dumps({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 4}}), 13.1)
    assert stream.tokens == 4  # usage wins over counted chunks (a token may decode to no text)
    assert stream.finished and stream.text == "abc"
    stream.event("[DONE]", 13.2)
    assert stream.done_marker
    broken = Stream()
    broken.event('{"error": {"message": "engine failed"}}', 1.0)
    assert broken.error is not None and "engine failed" in broken.error and not broken.finished


def test_percentile_interpolates():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(range(101)), 99) == 99.0


@pytest.mark.parametrize("done", [False, True])
def test_level_against_a_streaming_server(done):
    """Two streams at concurrency 2 over real sockets: chunked SSE, usage in the last chunk."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
        body = json.loads(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        events = [chunk(f"t{i}") for i in range(body["max_tokens"])]
        events.append(chunk("", "length", {"prompt_tokens": 1, "completion_tokens": body["max_tokens"]}))
        if done:
            events.append("data: [DONE]\n\n")
        for event in events:
            data = event.encode()
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> dict:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        bodies = iter([{"prompt": "x", "max_tokens": 5, "stream": True}] * 2)
        async with server:
            level = await run_level("127.0.0.1", port, "/v1/completions", bodies, concurrency=2, requests=2,
                                    headers={"Authorization": "Bearer t"}, cap_seconds=10)  # fmt: skip
        return level.figures()

    figures = asyncio.run(main())
    assert figures["finished"] == 2 and figures["errors"] == 0
    assert figures["output_tokens"] == 10
    assert figures["tokens_per_request_min"] == figures["tokens_per_request_max"] == 5
    assert figures["done_marker"] == (2 if done else 0)
    assert figures["ttft_p50_ms"] is not None and figures["inter_token_p50_ms"] is not None
