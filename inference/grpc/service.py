"""The gRPC face of the prediction gateway: `inference.GRPCInferenceService` (Open Inference Protocol v2).

Every call goes through the process's Gateway (inference.gateway) exactly as a /v2 REST
request does: the bearer token from the `authorization` metadata, the cached caller and
route, the same access rules (another user's private model is NOT_FOUND), the coalescer
into the workers, admission and deadlines, and the serving metrics (source `grpc`). A
failure is answered with the gRPC code of the HTTP status REST gives (inference.grpc.status)
and the same message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from django.conf import settings

from core.errors import PortalError
from inference import admission, guard, telemetry
from inference.gateway import SERVER_NAME, SERVER_VERSION, Gateway, metadata_of
from inference.grpc import codec
from inference.grpc import predict_v2_pb2 as pb
from inference.grpc import predict_v2_pb2_grpc as pb_grpc
from inference.grpc import status as grpc_status
from inference.routes import HttpError, Target
from registry import selectors
from registry.access import Action
from registry.models import VersionStatus

logger = logging.getLogger(__name__)

T = TypeVar("T")
SOURCE = "grpc"
EXTENSIONS = ["binary_tensor_data"]


def peer_address(peer: str) -> str:
    """The client's address from a gRPC peer string (ipv4:1.2.3.4:5, ipv6:[::1]:5, unix:...)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or "local"
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or "local"
    return "local"


def arrival_set(time_remaining: float | None) -> None:
    """Start the request's deadline now (INFERENCE_TIMEOUT_SECONDS), or sooner when the client's own
    gRPC deadline is shorter: nothing is computed for a caller that stopped waiting."""
    now = time.time()
    timeout = settings.INFERENCE_TIMEOUT_SECONDS
    if time_remaining is not None and time_remaining < timeout:
        now -= timeout - max(0.0, time_remaining)
    admission.arrived.set(now)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer on one Gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    # -- server --------------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        """Ready while a prediction worker is live and the database answers (REST: /v2/health/ready)."""
        try:
            ready = bool(await self.gateway.live_queues())
            if ready:
                await self.gateway.database_check()
        except HttpError:
            ready = False
        return pb.ServerReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    # -- models --------------------------------------------------------------------------
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return await self._answered(context, self._ready(request, context))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return await self._answered(context, self._metadata(request, context))

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        arrival_set(context.time_remaining())
        return await self._answered(context, self._infer(request, context))

    async def _ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        target = await self._target(request.name, request.version, context, Action.VIEW)
        ready = target.status == VersionStatus.READY and target.queue in await self.gateway.live_queues(target.queue)
        return pb.ModelReadyResponse(ready=ready)

    async def _metadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        target = await self._target(request.name, request.version, context, Action.VIEW)
        return codec.metadata_response(metadata_of(target))

    async def _infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        version = request.model_version or None
        user, target = await self._caller_target(request.model_name, version, context)
        guard.authorize(user, target, Action.PREDICT)
        return await self.gateway.prediction(
            user, target, version, SOURCE, lambda sample: self._predict(target, request, sample)
        )

    async def _predict(
        self, target: Target, request: pb.ModelInferRequest, sample: telemetry.Sample
    ) -> pb.ModelInferResponse:
        sample.payload = request.ByteSize()
        inputs = codec.inputs_of(request, target.signature, settings.INFERENCE_MAX_ELEMENTS)
        requested = codec.outputs_of(request, target.signature)
        parameters = codec.parameters_of(request.parameters)
        selected, answer = await self.gateway.tensors_infer(target, inputs, parameters, requested, sample)
        return codec.response_of(target.model_name, target.version, request.id, selected, answer)

    async def _target(self, name: str, version: str, context: Any, action: Action) -> Target:
        user, target = await self._caller_target(name, version or None, context)
        guard.authorize(user, target, action)
        return target

    async def _caller_target(self, name: str, version: str | None, context: Any) -> tuple[Any, Target]:
        """The caller (bearer token in the `authorization` metadata) and the version it addresses."""
        selectors.address_checked(name, version)
        metadata = dict(context.invocation_metadata() or ())
        headers = {b"authorization": str(metadata.get("authorization", "")).encode("latin-1", "replace")}
        user = await self.gateway.user(headers, peer_address(context.peer() or ""))
        return user, await self.gateway.target(user, name, version)

    # -- errors --------------------------------------------------------------------------
    async def _answered(self, context: Any, call: Awaitable[T]) -> T:
        """The call's answer; a failure aborts the call with the code of the HTTP status REST gives."""
        try:
            return await call
        except HttpError as exc:
            status, message, headers = exc.status, exc.message, exc.headers
        except PortalError as exc:
            status, message, headers = exc.status_code, exc.message, getattr(exc, "headers", {})
        except Exception:
            logger.exception("gRPC prediction gateway error")
            status, message, headers = 500, "Internal error in the prediction gateway.", {}
        code = grpc_status.code_of(status)
        await context.abort(code, message, trailing_metadata=grpc_status.trailers(code, message, headers))
        raise AssertionError("context.abort() returns only by raising")  # pragma: no cover
