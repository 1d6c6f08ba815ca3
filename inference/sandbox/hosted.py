"""What a model host does once sandboxed: the online loops ("serve") or a task's requests ("task").

Serve: the serving and generation loops of inference.serving run here, unchanged, against
the serving Redis. The host opens no socket: each Redis connection is made (and
authenticated) by the parent and handed over the channel; a model the loops need is asked
of the parent, which checks the version, verifies its artifact and copies it into this
host's cache. Heartbeat telemetry is forwarded to the parent's Prometheus registry.

Task: the parent (validation, a batch job, an evaluation) sends requests one at a time —
probe an artifact, load a version, predict on tensors, generate a job's rows — and gets
the answers back as msgpack (tensors as raw bytes with datatype and shape).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, cast

import redis

from core import redis as shared_redis
from inference import telemetry, wire
from inference.cache import LoadedModel, ModelSource, ModelUnavailable, model_cache, model_from_source
from inference.completions import CompletionRows
from inference.conversions.export import Conversion
from inference.generation import Engine
from inference.generation.worker import GenerationLoop
from inference.runs.loop import RunStopped
from inference.runtimes import TextRuntime
from inference.sandbox.channel import Channel, ChannelClosed
from inference.sandbox.policy import Applied
from inference.services import ProbeFailed, model_probe
from inference.serving import ServingLoop

logger = logging.getLogger(__name__)

PARENT_CHECK_SECONDS = 1.0


class HandedConnection(redis.Connection):
    """A Redis connection whose socket the parent opened, authenticated and handed over."""

    channel: Channel | None = None

    def _connect(self) -> socket.socket:
        if self.channel is None:
            raise redis.ConnectionError("no channel to the parent to ask for a Redis connection")
        try:
            reply, fds = self.channel.call({"op": "redis"})
        except (ChannelClosed, OSError) as exc:
            raise redis.ConnectionError(f"the parent did not hand a Redis connection: {exc}") from exc
        for extra in fds[1:]:
            os.close(extra)
        if not reply.get("ok") or not fds:
            raise redis.ConnectionError(str(reply.get("error") or "the parent handed no Redis connection"))
        sock = socket.socket(fileno=fds[0])
        sock.settimeout(self.socket_timeout)
        return sock


class ForwardingSink:
    """The host's telemetry: worker heartbeats and generation load go to the parent, the rest nowhere."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def worker_heartbeat(self, worker: str, models_loaded: int) -> None:
        self.channel.send({"op": "telemetry", "kind": "heartbeat", "worker": worker, "models_loaded": models_loaded})

    def generation_load(self, worker: str, loads: list[telemetry.GenerationLoad]) -> None:
        rows = [dataclasses.asdict(load) for load in loads]
        self.channel.send({"op": "telemetry", "kind": "generation_load", "worker": worker, "loads": rows})

    def record(self, **sample: Any) -> None:
        pass

    def generation(self, **sample: Any) -> None:
        pass

    def usage(self, **usage: Any) -> None:
        pass

    def stats(self, model: Any, window: str | None, number: int | None) -> dict[str, Any]:
        return {}


def _source_from_parent(channel: Channel, version_id: int) -> ModelSource:
    reply, _ = channel.call({"op": "model", "version_id": version_id})
    if not reply.get("ok"):
        raise ModelUnavailable(str(reply.get("error") or "the parent refused the model"))
    return ModelSource.from_json(reply["source"])


def _serve(channel: Channel, config: dict[str, Any]) -> int:
    HandedConnection.channel = channel
    shared_redis.connection_class_set(HandedConnection)
    model_cache().source = lambda version_id: _source_from_parent(channel, version_id)
    telemetry.sink_register(cast(telemetry.TelemetrySink, ForwardingSink(channel)))
    queues = list(config["queues"])
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    serving = ServingLoop(queues)
    generation = GenerationLoop(queues, serving.identity)
    serving.start()
    generation.start()
    parent = os.getppid()
    while not stopping.wait(PARENT_CHECK_SECONDS):
        if os.getppid() != parent:  # the parent died: nobody answers our requests any more
            logger.warning("the parent of this model host is gone; stopping")
            break
    for loop in (generation, serving):
        loop.stopping.set()
    for loop in (generation, serving):
        loop.join(timeout=5)
    return 0


class Tasks:
    """The requests of one task, answered in order: at most one model loaded."""

    def __init__(self) -> None:
        self.loaded: LoadedModel | None = None
        self.rows: CompletionRows | None = None
        self.conversion: Conversion | None = None

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "probe":
            result = model_probe(
                Path(request["path"]), request["format"], request["signature"], request.get("example"),
                request.get("labels"), task=request.get("task") or "",
            )  # fmt: skip
            return {"ok": True, "result": dataclasses.asdict(result)}
        if op == "load":
            self.loaded = model_from_source(ModelSource.from_json(request["source"]))
            return {"ok": True, "text": self.loaded.text, "generative": self.loaded.generative}
        if op == "predict":
            model = self._model()
            outputs = model.predict(wire.tensors_unpack(request["inputs"]), request.get("parameters"))
            return {"ok": True, "outputs": [[name, datatype, wire.tensors_pack({"a": array})["a"]]
                                            for name, datatype, array in outputs]}  # fmt: skip
        if op == "generate_start":
            return self._generate_start(request)
        if op == "rows":
            return self._rows(request)
        if op == "convert":
            return self._convert(request)
        return {"ok": False, "kind": "ValueError", "error": f"unknown request {op!r}"}

    def _model(self) -> LoadedModel:
        if self.loaded is None:
            raise ModelUnavailable("no model is loaded in this host")
        return self.loaded

    def _generate_start(self, request: dict[str, Any]) -> dict[str, Any]:
        model = self._model()
        if not model.generative:
            raise ModelUnavailable(f"{model.model_name} v{model.version} is not a text-generation model.")
        runtime = cast(TextRuntime, model.runtime)
        engine = Engine(runtime.module, runtime.tokenizer, **request["engine"])
        self.rows = CompletionRows(engine, request["requests"], first=int(request["first"]))
        return {"ok": True}

    def _convert(self, request: dict[str, Any]) -> dict[str, Any]:
        """A conversion's steps, one request each: start, export, quantize, compare, probe, artifact."""
        step = request.get("step")
        if step == "start":
            self.conversion = Conversion(request)
            return {"ok": True}
        if self.conversion is None:
            raise ModelUnavailable("no conversion was started in this host")
        if step == "export":
            return {"ok": True, **self.conversion.export()}
        if step == "quantize":
            return {"ok": True, **self.conversion.quantize()}
        if step == "compare":
            return {"ok": True, **self.conversion.compare()}
        if step == "probe":
            return {"ok": True, "result": self.conversion.probe(request.get("labels"), request.get("example"))}
        if step == "artifact":
            return {"ok": True, **self.conversion.artifact()}
        return {"ok": False, "kind": "ValueError", "error": f"unknown conversion step {step!r}"}

    def _rows(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.rows is None:
            raise ModelUnavailable("no generation was started in this host")
        deadline = time.monotonic() + float(request["budget"])
        try:
            lines = self.rows.rows(int(request["start"]), int(request["stop"]),
                                   alive=lambda: time.monotonic() < deadline, every=0.05)  # fmt: skip
        except RunStopped:
            return {"ok": True, "lines": None, "steps": self.rows.steps}
        return {"ok": True, "lines": lines, "steps": self.rows.steps}


def _tasks(channel: Channel) -> int:
    tasks = Tasks()
    while True:
        try:
            request, fds = channel.receive()
        except ChannelClosed:
            return 0
        for fd in fds:
            os.close(fd)
        try:
            reply = tasks.handle(request)
        except ProbeFailed as exc:
            reply = {"ok": False, "kind": "ProbeFailed", "error": str(exc)}
        except Exception as exc:  # the model's failure is the answer, the host goes on
            reply = {"ok": False, "kind": type(exc).__name__, "error": str(exc)}
        channel.send(reply)


def run(channel: Channel, config: dict[str, Any], applied: Applied) -> int:
    """Tell the parent the sandbox holds, then serve in the configured mode until told to stop."""
    channel.send({"ok": True, "applied": dataclasses.asdict(applied), "pid": os.getpid()})
    logger.info("model host %s sandboxed (Landlock ABI %s, %s path rules, %s calls refused); mode %s",
                os.getpid(), applied.landlock_abi, applied.rules, applied.seccomp_denied, config["mode"])  # fmt: skip
    if config["mode"] == "serve":
        return _serve(channel, config)
    return _tasks(channel)
