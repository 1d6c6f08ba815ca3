"""The serving supervisor: a thread of the Celery pool process that keeps its model host up.

It starts a "serve" host for the pool process's prediction queues and answers the host's
requests: a Redis connection (opened and authenticated here, handed over as a descriptor),
the model of a version (checked against the database: ready, and routed to one of the
host's queues; its artifact verified and copied into the host's cache), and telemetry to
record. A host that dies is started again after a back-off; the online path itself never
passes through here (the host talks to Redis directly).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from django.db import close_old_connections

from inference import telemetry
from inference.cache import ModelUnavailable, model_source
from inference.sandbox.channel import ChannelClosed, ChannelError
from inference.sandbox.spawn import Host, SandboxError, host_start, model_copy, redis_socket_fd, sandbox_dir
from inference.services import exception_summary

logger = logging.getLogger(__name__)

RESTART_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
# Telemetry a host may report per heartbeat (a host is not trusted to keep label counts sane).
MAX_LOADS = 64


def cache_for(queues: list[str]) -> Path:
    """The model cache of hosts serving these queues: a model of another queue never lands in it."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", "+".join(sorted(queues)))[:100] or "none"
    return sandbox_dir() / "models" / tag


class ServingSupervisor(threading.Thread):
    """Starts the pool process's model host, answers it, and starts it again when it dies."""

    def __init__(self, queues: list[str]) -> None:
        super().__init__(name="maas-sandbox", daemon=True)
        self.queues = queues
        self.cache = cache_for(queues)
        self.stopping = threading.Event()
        self.host: Host | None = None
        self.failures = 0
        self.last_error = ""

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.cache.mkdir(parents=True, exist_ok=True)  # a rule needs the directory to exist
                self.host = host_start("serve", [self.cache], queues=self.queues)
            except SandboxError as exc:
                self.last_error = str(exc)
                logger.error("no model host for %s: %s", ", ".join(self.queues), exc)
            else:
                self.failures = 0
                self._serve(self.host)
                ended = "" if self.stopping.is_set() else self.host.watch.cause(self.host.process)
                self.host.stop()
                if ended:
                    logger.error("model host %s: %s; starting another", self.host.process.pid, ended)
            self.failures += 1
            self.stopping.wait(RESTART_SECONDS[min(self.failures, len(RESTART_SECONDS)) - 1])

    def stop(self) -> None:
        self.stopping.set()
        if self.host is not None:
            self.host.stop()
        self.join(timeout=10)

    def _serve(self, host: Host) -> None:
        while not self.stopping.is_set():
            try:
                request, fds = host.channel.receive()
            except (ChannelClosed, ChannelError, OSError) as exc:
                if host.alive() and not self.stopping.is_set():
                    logger.error("model host %s broke the protocol (%s); stopping it", host.process.pid, exc)
                return
            for fd in fds:  # the host has no business sending descriptors
                os.close(fd)
            try:
                self._answer(host, request)
            except (ChannelClosed, OSError):
                return

    def _answer(self, host: Host, request: dict[str, Any]) -> None:
        op = request.get("op")
        if op == "telemetry":
            self._telemetry(request)
            return
        if op == "redis":
            try:
                fd = redis_socket_fd()
            except Exception as exc:  # Redis down: the host's loop retries
                host.channel.send({"ok": False, "error": exception_summary(exc)})
                return
            try:
                host.channel.send({"ok": True}, fds=[fd])
            finally:
                os.close(fd)
            return
        if op == "model":
            host.channel.send(self._model(request.get("version_id")))
            return
        host.channel.send({"ok": False, "error": f"unknown request {op!r}"})

    def _model(self, version_id: Any) -> dict[str, Any]:
        if not isinstance(version_id, int) or isinstance(version_id, bool):
            return {"ok": False, "error": "version_id must be an integer"}
        close_old_connections()
        try:
            source = model_source(version_id)
            if source.serving_queue not in self.queues:
                raise ModelUnavailable(
                    f"{source.model_name} v{source.version} is served on queue {source.serving_queue!r}, "
                    "not by this worker"
                )
            source = model_copy(source, self.cache)
        except ModelUnavailable as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # storage or database trouble: the version cannot be served now
            logger.exception("resolving version %s for the model host failed", version_id)
            return {"ok": False, "error": exception_summary(exc)}
        finally:
            close_old_connections()
        return {"ok": True, "source": source.as_json()}

    def _telemetry(self, request: dict[str, Any]) -> None:
        worker = request.get("worker")
        if not isinstance(worker, str) or len(worker) > 200:
            return
        try:
            if request.get("kind") == "heartbeat":
                telemetry.worker_heartbeat(worker, int(request["models_loaded"]))
            elif request.get("kind") == "generation_load":
                loads = [telemetry.GenerationLoad(**load) for load in request["loads"][:MAX_LOADS]]
                telemetry.generation_load(worker, loads)
        except (KeyError, TypeError, ValueError):
            logger.warning("model host sent malformed telemetry; ignored")
