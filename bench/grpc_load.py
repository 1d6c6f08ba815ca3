"""The gRPC benchmark's load generator: closed-loop OIP v2 inference over gRPC or REST (binary), one process.

    python bench/grpc_load.py grpc|h2|rest ADDRESS CONCURRENCY SECONDS REQUEST_FILE [TOKEN]

`concurrency` clients on one asyncio loop, each on a connection of its own, each sending its
next request when the previous answer arrived:

- rest: an HTTP/1.1 keep-alive connection on a raw asyncio stream; the whole request (headers
  and body: JSON header then raw tensor) is built once, an answer is read up to its length
  and only its status looked at;
- h2: gRPC the same way, on a raw asyncio stream: HTTP/2 frames built by hand (the request's
  HEADERS block once, as HPACK literals; its DATA frames), the answer's frames read up to
  the end of the stream, no HPACK decoding. An answer with a message is a success; one with
  none (gRPC's trailers-only answer) an error. As cheap a client as the rest one;
- grpc: grpc.aio, a channel with a subchannel pool of its own (an HTTP/2 connection each),
  no (de)serializers: what a Python gRPC application pays, about 2.5x the CPU per call of
  the raw clients on the project's machine.

REQUEST_FILE holds the serialized ModelInferRequest (grpc, h2) or the HTTP request (rest).
Prints one JSON line: requests, errors, the first error, seconds and every latency in ms.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import sys
import time
from pathlib import Path

import grpc

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""

    def failed(self, text: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or text


async def rest_client(address: str, request: bytes, until: float, tally: Tally) -> None:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(head)
            body = await reader.readexactly(int(length[1]) if length else 0)
            if head[9:12] != b"200":
                tally.failed(f"HTTP {head[9:12]!r}: {body[:200]!r}")
                continue
            tally.latencies.append((time.perf_counter() - started) * 1000)
    finally:
        writer.close()


async def grpc_client(address: str, request: bytes, token: str, until: float, tally: Tally) -> None:
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        # No serializers: the prebuilt request goes as it is, the answer stays bytes.
        call = channel.unary_unary(INFER_METHOD)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                await call(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                tally.failed(f"{exc.code().name}: {exc.details()}")
                continue
            tally.latencies.append((time.perf_counter() - started) * 1000)


# HTTP/2 (RFC 9113): frame types, flags and settings the h2 client uses.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
ENABLE_PUSH, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 0x2, 0x4, 0x5
MAX_WINDOW = 2**31 - 1


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def _hpack_int(value: int) -> bytes:
    """An HPACK integer with a 7-bit prefix (the literal's lengths; no Huffman bit)."""
    if value < 127:
        return bytes([value])
    out, value = bytearray([127]), value - 127
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes([*out, value])


def hpack_literals(headers: list[tuple[str, str]]) -> bytes:
    """A header block of literals without indexing, new names: no decoder state to keep in step."""
    block = b""
    for name, value in headers:
        block += b"\x00" + _hpack_int(len(name)) + name.encode() + _hpack_int(len(value)) + value.encode()
    return block


class H2Connection:
    """One HTTP/2 connection carrying one gRPC call at a time (closed loop)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.stream = -1
        self.send_window = 65535  # the connection's window for what we send
        self.stream_window = 65535
        self.initial_window = 65535
        self.max_frame = 16384
        self.received = 0  # DATA bytes since our last connection WINDOW_UPDATE

    def open(self) -> None:
        settings = struct.pack(">HIHI", ENABLE_PUSH, 0, INITIAL_WINDOW_SIZE, MAX_WINDOW)
        self.writer.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                          + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535)))  # fmt: skip

    async def call(self, block: bytes, message: bytes) -> str:
        """One call: '' when an answer with a message arrived, else what went wrong."""
        self.stream += 2
        stream, self.stream_window = self.stream, self.initial_window
        # One write for the whole request where the windows allow (one segment for the server to read).
        frames, sent = [frame(HEADERS, END_HEADERS, stream, block)], 0
        while sent < len(message):
            size = min(len(message) - sent, self.max_frame, self.send_window, self.stream_window)
            if size <= 0:
                self.writer.write(b"".join(frames))
                frames = []
                await self.frame_handled(stream)  # wait for a WINDOW_UPDATE
                continue
            last = END_STREAM if sent + size == len(message) else 0
            frames.append(frame(DATA, last, stream, message[sent : sent + size]))
            sent += size
            self.send_window -= size
            self.stream_window -= size
        self.writer.write(b"".join(frames))
        answered = 0
        while True:
            outcome = await self.frame_handled(stream)
            if outcome is None:
                continue
            if isinstance(outcome, int):
                answered += outcome
                continue
            return outcome if outcome or answered else "gRPC error (an answer without a message)"

    async def frame_handled(self, stream: int) -> int | str | None:
        """Read and handle one frame: DATA bytes of the stream, '' at its end, an error text, or None."""
        head = await self.reader.readexactly(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        on = int.from_bytes(head[5:9], "big") & MAX_WINDOW
        payload = await self.reader.readexactly(length) if length else b""
        if kind == DATA:
            self.received += length
            if self.received > 2**30:
                self.writer.write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
                self.received = 0
            if on == stream:
                return "" if flags & END_STREAM else length
        elif kind == HEADERS and on == stream and flags & END_STREAM:
            return ""
        elif kind == SETTINGS and not flags & ACK:
            for offset in range(0, len(payload), 6):
                key, value = struct.unpack_from(">HI", payload, offset)
                if key == INITIAL_WINDOW_SIZE:
                    self.stream_window += value - self.initial_window
                    self.initial_window = value
                elif key == MAX_FRAME_SIZE:
                    self.max_frame = value
            self.writer.write(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self.writer.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & MAX_WINDOW
            if on == 0:
                self.send_window += increment
            elif on == stream:
                self.stream_window += increment
        elif kind == RST_STREAM and on == stream:
            return f"stream reset (HTTP/2 error {int.from_bytes(payload[:4], 'big')})"
        elif kind == GOAWAY:
            raise ConnectionError(f"GOAWAY (HTTP/2 error {int.from_bytes(payload[4:8], 'big')})")
        return None


async def h2_client(address: str, request: bytes, token: str, until: float, tally: Tally) -> None:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    headers = [(":method", "POST"), (":scheme", "http"), (":path", INFER_METHOD), (":authority", address),
               ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "10S")]  # fmt: skip
    if token:
        headers.append(("authorization", f"Bearer {token}"))
    block = hpack_literals(headers)
    message = b"\x00" + struct.pack(">I", len(request)) + request  # gRPC's length-prefixed message
    connection = H2Connection(reader, writer)
    connection.open()
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            error = await connection.call(block, message)
            if error:
                tally.failed(error)
                continue
            tally.latencies.append((time.perf_counter() - started) * 1000)
    finally:
        writer.close()


def rest_request(address: str, model: str, body: bytes, header_length: int, token: str) -> bytes:
    """The whole HTTP/1.1 request, headers and body, as wrk sends it."""
    headers = [f"POST /v2/models/{model}/infer HTTP/1.1", f"Host: {address}",
               "Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {header_length}",
               f"Content-Length: {len(body)}"]  # fmt: skip
    if token:
        headers.append(f"Authorization: Bearer {token}")
    return "\r\n".join(headers).encode() + b"\r\n\r\n" + body


async def run(protocol: str, address: str, concurrency: int, seconds: float, request: bytes, token: str) -> Tally:
    tally = Tally()
    until = time.perf_counter() + seconds
    if protocol == "grpc":
        clients = [grpc_client(address, request, token, until, tally) for _ in range(concurrency)]
    elif protocol == "h2":
        clients = [h2_client(address, request, token, until, tally) for _ in range(concurrency)]
    else:
        clients = [rest_client(address, request, until, tally) for _ in range(concurrency)]
    await asyncio.gather(*clients)
    return tally


def main(argv: list[str]) -> None:
    protocol, address, concurrency, seconds, request_file = argv[:5]
    token = argv[5] if len(argv) > 5 else ""
    started = time.perf_counter()
    tally = asyncio.run(run(protocol, address, int(concurrency), float(seconds), Path(request_file).read_bytes(),
                            token))  # fmt: skip
    print(json.dumps({"requests": len(tally.latencies), "errors": tally.errors, "first_error": tally.first_error,
                      "seconds": time.perf_counter() - started, "latencies_ms": tally.latencies}))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
