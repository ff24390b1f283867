"""The Open Inference Protocol over gRPC on the gateway (``inference.GRPCInferenceService``).

Ray Serve's gRPC ingress (the HAProxy ingress's gRPC frontend, or its Python proxy) calls
the ingress deployment's method named like the RPC with the request message and a
``grpc_context``; with several applications the call's ``application`` metadata picks one.
Each method here goes the HTTP routes' way: the caller's key from ``authorization:
Bearer`` metadata (401), the model (404), its scope and rate (403, 429), the request's
size and instances (413), the V2 decode, ``Gateway.answer`` (version routing, the
decision record), and errors as the gRPC status of their HTTP status
(``serving.protocol.grpc_v2.STATUS_CODES``) with the same message. ``x-request-id``,
``x-model-version`` and ``x-decision-id`` come back as trailing metadata.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from starlette.requests import Request
from starlette.responses import Response

from deployments.http import (
    KEY_SCOPE_KEY,
    REQUEST_ID,
    REQUEST_ID_FORMAT,
    REQUEST_ID_RULE,
    authenticate,
    error_of,
)
from deployments.metrics import MODEL_SCOPE_KEY
from deployments.routes import VERSION_HEADER, describe_server, readiness
from serving import dataplane
from serving.errors import BadRequest, PayloadTooLarge
from serving.protocol import grpc_v2
from serving.protocol.grpc_v2 import pb

if TYPE_CHECKING:
    from deployments.gateway import Gateway
    from deployments.served import Served
    from serving.security import ApiKey

#: the RPCs FinServe answers; Triton's others answer UNIMPLEMENTED
SERVED_RPCS = ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata",
               "ModelInfer")


def _serve_request_id() -> str:
    """The id Ray Serve gave this call (its ``request_id`` metadata, else its own), as its
    logs carry it; a fresh one outside Serve."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or uuid.uuid4().hex


@dataclass
class GrpcCall:
    """One gRPC call as the gateway's HTTP-shaped steps read it: ``request`` (a scope with
    the call's request id, routing key and key) for ``Gateway.admit`` and ``answer``,
    ``response`` for the headers ``answer`` sets, and the trailing metadata to send."""

    metadata: dict[str, str]
    request_id: str
    request: Request
    response: Response = field(default_factory=Response)
    trailing: dict[str, str] = field(default_factory=dict)
    #: a malformed x-request-id, refused (400) once the call is under error handling
    bad_request_id: bool = False

    @classmethod
    def of(cls, route: str, grpc_context: Any) -> GrpcCall:
        from deployments.gateway import ROUTING_KEY  # (gateway.py imports this module)

        metadata = {k.lower(): v for k, v in grpc_context.invocation_metadata()
                    if isinstance(v, str)}  # binary (-bin) metadata is not for us
        given = metadata.get(REQUEST_ID)
        valid = given is None or bool(REQUEST_ID_FORMAT.fullmatch(given.encode("utf-8")))
        rid = given if given and valid else _serve_request_id()
        headers = [(REQUEST_ID.encode(), rid.encode())]
        if ROUTING_KEY in metadata:
            headers.append((ROUTING_KEY.encode(), metadata[ROUTING_KEY].encode("utf-8")))
        scope = {"type": "http", "method": "POST", "path": route, "headers": headers,
                 "query_string": b"", KEY_SCOPE_KEY: None}
        return cls(metadata, rid, Request(scope), trailing={REQUEST_ID: rid},
                   bad_request_id=not valid)

    def check(self, keys: Any, required: bool, public: bool) -> None:
        """400 for a malformed x-request-id, then the caller's key (401)."""
        if self.bad_request_id:
            raise BadRequest(REQUEST_ID_RULE)
        self.request.scope[KEY_SCOPE_KEY] = authenticate(
            keys, required, self.metadata.get("authorization"), public)

    def answered(self) -> None:
        """The version and decision id ``Gateway.answer`` set, as trailing metadata."""
        from deployments.gateway import DECISION_HEADER

        for name in (VERSION_HEADER, DECISION_HEADER):
            if name in self.response.headers:
                self.trailing[name] = self.response.headers[name]


Handler = Callable[["GrpcInference", GrpcCall, Any], Awaitable[Any]]


def rpc(response_type: type, public: bool = False) -> Callable[[Handler], Callable[..., Any]]:
    """A gateway method for the RPC the handler is named after: admission, errors as gRPC
    statuses, trailing metadata and metrics around ``handler(self, call, request)``.
    ``public`` RPCs (health) need no key even when keys are required."""
    def wrap(handler: Handler) -> Callable[..., Any]:
        name = handler.__name__

        async def method(self: GrpcInference, request: Any, grpc_context: Any) -> Any:
            return await self._grpc_serve(name, handler, request, grpc_context,
                                          response_type, public)

        method.__name__ = method.__qualname__ = name
        method.__doc__ = handler.__doc__
        return method
    return wrap


class GrpcInference:
    """The gateway's ``inference.GRPCInferenceService`` methods (a base of ``Gateway``)."""

    async def _grpc_serve(self, name: str, handler: Handler, request: Any, grpc_context: Any,
                          response_type: type, public: bool) -> Any:
        gateway: Gateway = self  # type: ignore[assignment]
        started = time.perf_counter()
        route = f"/{grpc_v2.SERVICE.full_name}/{name}"
        call = GrpcCall.of(route, grpc_context)
        status = 200
        gateway.in_flight.count += 1
        try:
            await asyncio.sleep(0)  # as RequestMetricsMiddleware: let concurrent calls count
            call.check(gateway.keys, gateway.require_auth, public)
            answer = await handler(self, call, request)
            call.answered()
        except Exception as exc:  # every error leaves as its status, never UNKNOWN
            status, message, headers = error_of(exc, route, call.request_id)
            grpc_context.set_code(grpc.StatusCode[grpc_v2.status_code(status)])
            grpc_context.set_details(message)
            call.trailing.update({k.lower(): v for k, v in (headers or {}).items()})
            answer = response_type()
        finally:
            gateway.in_flight.count -= 1
        grpc_context.set_trailing_metadata(list(call.trailing.items()))
        model = call.request.scope.get(MODEL_SCOPE_KEY, "")
        gateway.metrics.requests.inc(tags={
            "model": model, "version": call.trailing.get(VERSION_HEADER, ""), "route": route,
            "status": str(status)})
        gateway.metrics.latency.observe((time.perf_counter() - started) * 1000,
                                        tags={"model": model, "route": route})
        return answer

    def _grpc_model(self, call: GrpcCall, model: str, version: str
                    ) -> tuple[Served, ApiKey | None]:
        """The served model (404), the key's scope and rate for it (403, 429), and the
        version asked for, if any (404); and the caller's key."""
        gateway: Gateway = self  # type: ignore[assignment]
        served, key = gateway.admit(call.request, model)
        served.version(version or None)
        return served, key

    @rpc(pb.ServerLiveResponse, public=True)
    async def ServerLive(self, call: GrpcCall, request: Any) -> Any:
        """Liveness (``GET /v2/health/live``)."""
        return pb.ServerLiveResponse(live=True)

    @rpc(pb.ServerReadyResponse, public=True)
    async def ServerReady(self, call: GrpcCall, request: Any) -> Any:
        """Every model ready (``GET /v2/health/ready``)."""
        states = await readiness(self)  # type: ignore[arg-type]
        return pb.ServerReadyResponse(ready=all(states.values()))

    @rpc(pb.ServerMetadataResponse)
    async def ServerMetadata(self, call: GrpcCall, request: Any) -> Any:
        """Name, version and extensions (``GET /v2``)."""
        meta = describe_server()
        return pb.ServerMetadataResponse(name=meta.name, version=meta.version,
                                         extensions=meta.extensions)

    @rpc(pb.ModelReadyResponse)
    async def ModelReady(self, call: GrpcCall, request: Any) -> Any:
        """One model ready (``GET /v2/models/{m}[/versions/{v}]/ready``)."""
        served, _ = self._grpc_model(call, request.name, request.version)
        return pb.ModelReadyResponse(ready=await served.ready())

    @rpc(pb.ModelMetadataResponse)
    async def ModelMetadata(self, call: GrpcCall, request: Any) -> Any:
        """Inputs, outputs and versions (``GET /v2/models/{m}[/versions/{v}]``)."""
        served, _ = self._grpc_model(call, request.name, request.version)
        return grpc_v2.model_metadata(served.metadata())

    @rpc(pb.ModelInferResponse)
    async def ModelInfer(self, call: GrpcCall, request: Any) -> Any:
        """Inference (``POST /v2/models/{m}[/versions/{v}]/infer``)."""
        gateway: Gateway = self  # type: ignore[assignment]
        served, key = self._grpc_model(call, request.model_name, request.model_version)
        limits = gateway.args.limits
        if request.ByteSize() > limits.max_body_bytes:
            raise PayloadTooLarge(
                f"request message is larger than the limit of {limits.max_body_bytes} bytes")
        body, raw_inputs = grpc_v2.infer_request(request)
        raw = dataplane.decode_v2(body, served.task, raw_inputs, limits.max_instances)
        names = dataplane.requested_outputs(served.task, body)
        params = served.task.request_params(dataplane.v2_parameters(body))
        version, outputs = await gateway.answer(
            call.request, call.response, served, key, request.model_version or None, raw,
            params, "grpc")
        return grpc_v2.infer_response(served.name, version, body.id, outputs, names)


def _unimplemented(method: Any) -> Callable[..., Any]:
    """A gateway method for an RPC of Triton's service that FinServe does not serve: it
    answers UNIMPLEMENTED (Serve would answer INTERNAL for a method the gateway lacks)."""
    details = (f"{method.name} is not served here; FinServe serves "
               f"{', '.join(SERVED_RPCS)}")

    def refuse(grpc_context: Any) -> None:
        grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        grpc_context.set_details(details)

    if method.server_streaming:
        async def stream(self: Any, request: Any, grpc_context: Any) -> Any:
            refuse(grpc_context)
            return
            yield  # an async generator that yields nothing

        stream.__name__ = method.name
        return stream

    async def unary(self: Any, request: Any, grpc_context: Any) -> Any:
        refuse(grpc_context)
        return getattr(pb, method.output_type.name)()

    unary.__name__ = method.name
    return unary


for _method in grpc_v2.SERVICE.methods:
    if _method.name not in SERVED_RPCS:
        setattr(GrpcInference, _method.name, _unimplemented(_method))
