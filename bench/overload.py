"""The serving benchmark's overload phase: closed-loop clients past the portal's admission limit.

`run_overload` keeps `clients` HTTP/1.1 connections busy (each sends its next request when
the last one is answered) for `seconds`, against a path of the portal, and records per
request its status, latency and `Retry-After`; a sampler thread meanwhile counts the
connections PostgreSQL holds to the run's database (pg_stat_activity). Standard library
plus psycopg2 (the portal's driver); nothing here starts or stops a server.
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

from loadgen import head_parse, percentile


@dataclass
class Answered:
    status: int
    seconds: float
    retry_after: str | None


@dataclass
class Overload:
    """What one overload load saw."""

    label: str
    clients: int
    seconds: float
    answers: list[Answered] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # connection errors, by kind
    connections: list[int] = field(default_factory=list)  # database connections sampled during the load

    def statuses(self) -> Counter[int]:
        return Counter(answer.status for answer in self.answers)

    def latencies_ms(self, status: int) -> list[float]:
        return [answer.seconds * 1000 for answer in self.answers if answer.status == status]

    def summary(self, deadline_seconds: float) -> str:
        total = len(self.answers)
        counts = self.statuses()
        refused, admitted = self.latencies_ms(503), self.latencies_ms(200)
        late = sum(1 for ms in admitted if ms > deadline_seconds * 1000)
        without_hint = sum(1 for a in self.answers if a.status == 503 and not (a.retry_after or "").isdigit())
        parts = [
            f"{self.label}: {self.clients} clients for {self.seconds:g} s, {total:,} answers "
            f"({', '.join(f'{status}: {count:,}' for status, count in sorted(counts.items()))})",
            f"503 {100 * counts[503] / max(1, total):.1f}%: p50 {_ms(percentile(refused, 50))}, "
            f"p99 {_ms(percentile(refused, 99))}, max {_ms(max(refused, default=None))}, "
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


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


async def _client(port: int, request: bytes, stop_at: float, result: Overload) -> None:
    reader = writer = None
    while time.monotonic() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            started = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status, headers = head_parse(head[:-4])
            await reader.readexactly(int(headers.get("content-length", "0")))
            result.answers.append(Answered(status, time.monotonic() - started, headers.get("retry-after")))
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            result.failures[type(exc).__name__] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def run_overload(
    label: str, port: int, path: str, body: bytes, headers: dict[str, str], clients: int, seconds: float,
    database: str | None = None,
) -> Overload:  # fmt: skip
    """`clients` closed-loop connections POSTing `body` to `path` for `seconds`."""
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    result = Overload(label, clients, seconds)

    async def main() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(_client(port, request, stop_at, result) for _ in range(clients)))

    with _connections_sampled(database, result.connections):
        asyncio.run(main())
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
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    connection.autocommit = True
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            try:
                samples.append(_count_connections(connection, database))
            except psycopg2.Error:
                samples.append(-1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join(timeout=5)
        connection.close()
