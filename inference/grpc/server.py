"""The gRPC server process: `manage.py grpcserve` runs `serve()` (grpc.aio, one event loop).

Several processes may serve one address: the port is bound with SO_REUSEPORT, and the
kernel spreads new connections over them (a connection, and the calls it multiplexes, stays
with one process, as an HTTP/1.1 keep-alive connection stays with one uvicorn worker).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from django.conf import settings

from core.startup import startup_objects_frozen
from inference.gateway import gateway
from inference.grpc import predict_v2_pb2_grpc as pb_grpc
from inference.grpc.service import InferenceService

logger = logging.getLogger(__name__)
# Calls in progress at a SIGTERM get this long to finish.
STOP_GRACE_SECONDS = 5.0


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel options: the receive limit (a larger message is refused RESOURCE_EXHAUSTED before
    it is read), and a port shared by the processes serving one address."""
    return [("grpc.max_receive_message_length", max_message_bytes), ("grpc.so_reuseport", 1)]


async def serve(bind: str) -> None:
    """Serve `bind` (host:port) until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=server_options(settings.GRPC_MAX_MESSAGE_BYTES))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(gateway), server)
    try:
        server.add_insecure_port(bind)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot bind the gRPC server to {bind!r} (GRPC_BIND): {exc}") from None
    await server.start()
    logger.info("gRPC (Open Inference Protocol v2) serving on %s", bind)
    startup_objects_frozen()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await server.stop(STOP_GRACE_SECONDS)
