"""The gRPC benchmark's load generator: closed-loop OIP v2 inference over gRPC or REST (binary), one process.

    python bench/grpc_load.py grpc|rest ADDRESS CONCURRENCY SECONDS REQUEST_FILE [TOKEN]

`concurrency` clients on one asyncio loop, each on a connection of its own (REST: an HTTP/1.1
keep-alive connection; gRPC: a channel with a subchannel pool of its own, so an HTTP/2
connection each), each sending its next request when the previous answer arrived. The
request is built once (REQUEST_FILE: the serialized ModelInferRequest for gRPC; the HTTP
body, JSON header then raw tensor, for REST) and nothing is decoded per answer beyond its
status, so the client costs as little as Python allows on both protocols. Prints one JSON
line: requests, errors, the first error, seconds and every latency in ms.
"""

from __future__ import annotations

import asyncio
import json
import re
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
