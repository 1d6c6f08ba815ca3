"""A bound on the Django requests one web process runs at once, and so on its database connections.

Under ASGI, Django runs each request's synchronous code (views, middleware, the ORM) in a
thread of its own, created for the request and ended after it; a thread opens its own
database connection. Nothing bounded those threads: a burst of 200 requests on the friendly
predict endpoint opened a connection each and PostgreSQL refused everyone else ("too many
clients"). With CONN_MAX_AGE the connections even outlived their threads (a dead thread's
connection is only closed when the garbage collector gets to it), which kept sign-in failing
for minutes after the burst.

So the ASGI entry point (portal.asgi) serves Django through `BoundedASGIHandler`:

- at most WEB_MAX_CONCURRENT_REQUESTS requests run their views at once per process; others
  wait their turn, at most WEB_QUEUE_SECONDS. A request is answered 503 with Retry-After at
  once, from its request line (its body unread), when WEB_MAX_WAITING_REQUESTS already wait,
  or when the wait it can expect (those ahead of it times the recent view time, over the
  running limit) is longer than half of WEB_QUEUE_SECONDS. The margin is there because view
  times vary and a request refused after waiting is the worst answer of all: with the whole
  of WEB_QUEUE_SECONDS as the bound, the overload benchmark's refusals had a p99 of 3.3 s
  (refused at the end of the 3 s wait), with half of it 0.37 s. When a request arrived is
  recorded (inference.admission.arrived), so that a prediction's deadline covers this wait
  too. Reading a request's body (an upload streaming in) and sending the response (a
  download streaming out) take no turn: only the view, which is where a thread holds a
  connection.
- when its view returns, a request's connections are closed, in its own thread: the thread
  ends with the request. On PostgreSQL (DATABASE_POOL, the default) closing gives the
  connection back to the process's psycopg 3 pool, for the next request's thread to borrow;
  without the pool it ends the connection (a persistent one could never be reused, only leaked).

The /v2 gateway and /v1 do not pass here: their database lookups (cache misses) run in the
event loop's default thread pool, min(32, cores + 4) long-lived threads; the serving-metrics
flusher (monitoring.metrics.recording) is one more thread. They borrow from the same pool,
whose size (DATABASE_POOL_SIZE) defaults to all of these together. A web process therefore
holds at most WEB_MAX_CONCURRENT_REQUESTS + min(32, cores + 4) + 1 connections, whatever the
load, pooled or not.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.db import connections
from django.http import HttpRequest, HttpResponseBase, JsonResponse

from inference import admission

# Seconds a refused caller is told to wait.
RETRY_AFTER = "1"


def _close_connections() -> None:
    for connection in connections.all(initialized_only=True):
        connection.close()


class BoundedASGIHandler(ASGIHandler):
    """Django's ASGI handler, with at most `limit` views running at once (see the module's docstring)."""

    def __init__(self, limit: int, waiting: int, seconds: float) -> None:
        super().__init__()
        self.limit = limit
        self.waiting_limit = waiting
        self.seconds = seconds
        self.waiting = 0
        self.view_seconds = 0.0  # smoothed time a view takes
        self._turns: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._turns is None or self._loop is not loop:
            self._turns, self._loop = asyncio.Semaphore(self.limit), loop
        return self._turns

    def expected_wait(self) -> float:
        """Seconds a request arriving now can expect to wait for its turn."""
        return (self.waiting + 1) * self.view_seconds / self.limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        admission.arrived.set(time.time())  # a prediction's deadline starts now (seen by the view's thread)
        if scope["type"] == "http" and self._full():
            # Refused from the request line alone: under overload, reading a large body (and the
            # event-loop turns it takes while the views' threads hold the GIL) is most of a
            # refusal's time. The unread body is discarded by the server.
            await _refusal_send(send, self._full_message())
            return
        await super().__call__(scope, receive, send)

    def _full(self) -> bool:
        """No turn is free and a new request could not surely get one within WEB_QUEUE_SECONDS."""
        turns = self._semaphore()
        return turns.locked() and (self.waiting >= self.waiting_limit or self.expected_wait() > self.seconds / 2)

    def _full_message(self) -> str:
        return (f"{self.limit} requests are running and {self.waiting} waiting in this server "
                f"(WEB_MAX_CONCURRENT_REQUESTS, WEB_MAX_WAITING_REQUESTS, WEB_QUEUE_SECONDS "
                f"{self.seconds:g}): retry shortly.")  # fmt: skip

    async def run_get_response(self, request: HttpRequest) -> HttpResponseBase:
        turns = self._semaphore()
        if turns.locked():
            if self._full():  # full since the request line came in (its body was being read)
                return _refusal(self._full_message())
            self.waiting += 1
            try:
                await asyncio.wait_for(turns.acquire(), self.seconds)
            except TimeoutError:
                return _refusal(f"The request waited {self.seconds:g}s (WEB_QUEUE_SECONDS) for one of the "
                                f"{self.limit} running requests to finish: retry shortly.")  # fmt: skip
            finally:
                self.waiting -= 1
        else:
            await turns.acquire()
        started = time.monotonic()
        try:
            response = await super().run_get_response(request)
            # The request's own thread (thread-sensitive, like the view): its connection, not another's.
            await sync_to_async(_close_connections)()
            return response
        finally:
            turns.release()
            took = time.monotonic() - started
            self.view_seconds = took if not self.view_seconds else self.view_seconds + 0.2 * (took - self.view_seconds)


def _refusal(message: str) -> JsonResponse:
    response = JsonResponse({"error": message, "code": "overloaded"}, status=503)
    response["Retry-After"] = RETRY_AFTER
    # Answered before Django's middleware (which would add these): a length, not a chunked
    # body, and no content sniffing.
    response["Content-Length"] = str(len(response.content))
    response["X-Content-Type-Options"] = "nosniff"
    return response


async def _refusal_send(send: Any, message: str) -> None:
    """`_refusal`'s 503, sent straight over ASGI (no request object exists yet)."""
    response = _refusal(message)
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})


def bounded_asgi_application(**kwargs: Any) -> BoundedASGIHandler:
    """Like django.core.asgi.get_asgi_application, with the bounds from settings."""
    django.setup(set_prefix=False)
    return BoundedASGIHandler(
        settings.WEB_MAX_CONCURRENT_REQUESTS, settings.WEB_MAX_WAITING_REQUESTS, settings.WEB_QUEUE_SECONDS
    )
