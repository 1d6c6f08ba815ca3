"""The serving benchmark's overload phase: requests arriving faster than the portal can answer.

`capacity` measures what a path sustains (answers 200 per second with closed-loop clients);
`run_overload` then sends requests at a fixed rate (open loop: a request goes out on time
whether or not the earlier ones were answered, each on an idle keep-alive connection or a
new one) for `seconds`, and records per request its status, latency and `Retry-After`; a
sampler thread meanwhile counts the
connections PostgreSQL holds to the run's database (pg_stat_activity). Standard library
plus psycopg (the portal's driver); nothing here starts or stops a server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from loadgen import ChunkedDecoder, ProtocolError, head_parse, percentile


@dataclass
class Answered:
    status: int
    seconds: float
    retry_after: str | None
    sent: float = 0.0  # seconds into the load


@dataclass
class Overload:
    """What one overload load saw."""

    label: str
    clients: int  # closed loop: connections; open loop: requests per second
    seconds: float
    answers: list[Answered] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # connection errors, by kind
    connections: list[int] = field(default_factory=list)  # database connections sampled during the load

    def statuses(self) -> Counter[int]:
        return Counter(answer.status for answer in self.answers)

    def latencies_ms(self, status: int, after: float = 0.0) -> list[float]:
        """Latencies of the answers with `status`, of requests sent `after` seconds into the load or later."""
        return [a.seconds * 1000 for a in self.answers if a.status == status and a.sent >= after]

    def summary(self, deadline_seconds: float) -> str:
        total = len(self.answers)
        counts = self.statuses()
        refused, admitted = self.latencies_ms(503), self.latencies_ms(200)
        late = sum(1 for ms in admitted if ms > deadline_seconds * 1000)
        without_hint = sum(1 for a in self.answers if a.status == 503 and not (a.retry_after or "").isdigit())
        parts = [
            f"{self.label}: {self.clients:,} requests/s for {self.seconds:g} s, {total:,} answers "
            f"({', '.join(f'{status}: {count:,}' for status, count in sorted(counts.items()))})",
            f"503 {100 * counts[503] / max(1, total):.1f}%: p50 {_ms(percentile(refused, 50))}, "
            f"p99 {_ms(percentile(refused, 99))} (sent after the first {ONSET_SECONDS:g} s: "
            f"{_ms(percentile(self.latencies_ms(503, ONSET_SECONDS), 99))}), max {_ms(max(refused, default=None))}, "
            f"without a numeric Retry-After {without_hint}",
            f"200: p50 {_ms(percentile(admitted, 50))}, p99 {_ms(percentile(admitted, 99))}, "
            f"max {_ms(max(admitted, default=None))}, past the {deadline_seconds:g} s deadline {late}",
            f"500s {counts[500]}; connection errors {sum(self.failures.values())}"
            + (f" ({dict(self.failures)})" if self.failures else ""),
        ]
        if self.connections:
            refused = self.connections.count(-1)
            parts.append(f"database connections: max {max(self.connections)}, last {self.connections[-1]} "
                         f"({len(self.connections)} samples" + (f", {refused} refused by the server: too many "
                         "clients" if refused else "") + ")")  # fmt: skip
        return "\n    ".join(parts)


# The first second of an overload: the servers' backlogs fill, and every request they admit
# meanwhile is decoded before the refusals behind it are sent. Reported apart, never left out.
ONSET_SECONDS = 1.0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


# uvicorn closes a keep-alive connection idle for 5 s; one idle longer than this is not reused.
IDLE_SECONDS = 4.0


class _Connections:
    """Idle keep-alive connections to the server, opened on demand (an open-loop client needs many)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < IDLE_SECONDS:
                return reader, writer
            writer.close()
        return await asyncio.open_connection("127.0.0.1", self.port)

    def give_back(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.idle.append((reader, writer, time.monotonic()))

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()


async def _one(connections: _Connections, request: bytes, result: Overload, load_started: float = 0.0) -> None:
    """Send one request and record its answer (a connection error is counted, not raised)."""
    started = time.monotonic()
    writer = None
    try:
        reader, writer = await connections.take()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status, headers = head_parse(head[:-4])
        if headers.get("transfer-encoding", "").lower() == "chunked":
            decoder = ChunkedDecoder()
            while not decoder.finished:
                decoder.feed(await reader.readuntil(b"\r\n"))
        else:
            await reader.readexactly(int(headers.get("content-length", "0")))
        seconds = time.monotonic() - started
        result.answers.append(Answered(status, seconds, headers.get("retry-after"), started - load_started))
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            connections.give_back(reader, writer)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError) as exc:
        result.failures[type(exc).__name__] += 1
        if writer is not None:
            writer.close()


def _request_bytes(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def capacity(port: int, path: str, body: bytes, headers: dict[str, str], clients: int, seconds: float) -> float:
    """Answers with 200 per second with `clients` closed-loop connections: what the server sustains."""
    request = _request_bytes(path, body, headers)
    result = Overload("capacity", clients, seconds)

    async def client(connections: _Connections, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            await _one(connections, request, result)

    async def main() -> None:
        connections = _Connections(port)
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(client(connections, stop_at) for _ in range(clients)))
        connections.close()

    started = time.monotonic()
    asyncio.run(main())
    return result.statuses()[200] / (time.monotonic() - started)


def run_overload(
    label: str, port: int, path: str, body: bytes, headers: dict[str, str], rate: float, seconds: float,
    database: str | None = None, drain_seconds: float = 15,
) -> Overload:  # fmt: skip
    """Open loop: `rate` requests per second for `seconds`, however the server answers, then their answers."""
    request = _request_bytes(path, body, headers)
    result = Overload(label, round(rate), seconds)

    async def main() -> None:
        connections = _Connections(port)
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        sent = 0
        while (now := time.monotonic()) < started + seconds:
            due = int((now - started) * rate) + 1
            for _ in range(due - sent):
                task = asyncio.create_task(_one(connections, request, result, started))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            sent = due
            await asyncio.sleep(0.002)
        if tasks:
            await asyncio.wait(tasks, timeout=drain_seconds)
        result.failures["unanswered"] += sum(1 for task in tasks if not task.done())
        for task in tasks:
            task.cancel()
        connections.close()

    with _connections_sampled(database, result.connections):
        asyncio.run(main())
    if not result.failures["unanswered"]:
        del result.failures["unanswered"]
    return result


def _count_connections(connection: Any, database: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [database])
        return int(cursor.fetchone()[0])


@contextmanager
def _connections_sampled(database: str | None, samples: list[int], every: float = 0.1) -> Iterator[None]:
    """Count, every `every` s, the connections PostgreSQL (127.0.0.1:5432) holds to `database`.

    One connection of its own (to the `postgres` database, so not counted), opened before the
    load; a sample the server refuses is recorded as -1.
    """
    if database is None:
        yield
        return
    import psycopg

    connection = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            try:
                samples.append(_count_connections(connection, database))
            except psycopg.Error:
                samples.append(-1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join(timeout=5)
        connection.close()
