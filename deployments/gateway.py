"""The FastAPI ingress: admit, route to a version, call the model's placement, record the
decision, map errors.

Routes (``deployments.routes``): Open Inference Protocol V2, TF-Serving REST V1, and one
task route per model (``POST /v1/{model}/{route}``) with named fields, all on the OpenAPI
page at ``/docs``. Where each model's pipeline runs is its placement
(``deployments.placements``).
"""

import asyncio
import logging
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.deploy import IngressTimeouts
from deployments.drift_metrics import DriftMetrics
from deployments.fast_routes import FastRoutes
from deployments.grpc_ingress import GrpcInference
from deployments.http import (
    ADMITTED_SCOPE_KEY,
    KEY_SCOPE_KEY,
    PATH_CHECK,
    AuthMiddleware,
    BodyLimitMiddleware,
    GatewayRoute,
    JsonBodyMiddleware,
    RequestIdMiddleware,
    install_error_handlers,
    request_id,
)
from deployments.metrics import (
    MODEL_SCOPE_KEY,
    GatewayMetrics,
    InFlight,
    RequestMetricsMiddleware,
)
from deployments.placements import placement
from deployments.responses import only_documented
from deployments.routes import VERSION_HEADER, add_routes
from deployments.served import Served
from serving import __version__
from serving.audit import Recorder, decision_id
from serving.config import AppArgs, Routing
from serving.errors import ModelNotFound
from serving.runtime import settle_heap
from serving.security import ApiKey, KeyFile, KeyRing, RateLimiter
from serving.store import ModelStore, StoreUnavailable, retry_while_unavailable
from serving.tasks import get_task
from serving.traffic import agrees

log = logging.getLogger("finserve.gateway")
ROUTING_KEY = "x-routing-key"
#: FinServe's own id of the recorded decision (chain:seq), unique even when a client
#: reuses its x-request-id; ``finserve audit replay`` takes it
DECISION_HEADER = "x-decision-id"


@serve.deployment
@serve.ingress()
class Gateway(GrpcInference):
    """HTTP and gRPC ingress of every served model."""

    def __init__(self, args: dict[str, Any],
                 handles: dict[str, dict[str, DeploymentHandle]]) -> None:
        self.args = AppArgs.model_validate(args)
        self.store = ModelStore(self.args.store_uri)
        timeout_s = self.args.limits.request_timeout_s
        self.in_flight = InFlight()
        self.models: dict[str, Served] = {
            m.name: Served(settings=m, task=get_task(m.task_name),
                           placement=placement(m, self.store, timeout_s, handles[m.name],
                                               self.in_flight.alone))
            for m in self.args.models
        }
        security = self.args.security
        # re-read when the file changes: a removed key is refused within a second or two
        self.keys = KeyFile(security.api_keys_file) if security.api_keys_file else None
        if security.require_auth and self.keys is None:
            raise ValueError("security.require_auth is on but no api_keys_file is set")
        self.require_auth = security.require_auth
        replicas = self.args.gateway.num_replicas
        self.limiter = RateLimiter(security.rate_per_s, replicas=replicas)
        self.recorder = (Recorder(self.args.audit, alone=self.in_flight.alone)
                         if self.args.audit.enabled else None)
        self.metrics = GatewayMetrics()
        self.drift = DriftMetrics(self.store, self.args.models)
        self._routing: Routing | None = None
        self._routed = False  # a routing has applied: later updates fail, never defer
        self._background: set[asyncio.Task[None]] = set()
        if not self.require_auth:
            log.warning("FinServe is running OPEN: no API key is required (security.require_auth)")
        settle_heap()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Routing (versions, traffic splits, shadows) applied in place; versions are
        resolved in the store here, so an unknown one fails this update with a message.
        At start only, a store that cannot be read does not fail the replica: its models
        are not ready (503 naming the store) until the routing applies in the background."""
        routing = Routing.model_validate(config)
        unknown = set(routing.models) - set(self.models)
        if unknown:
            raise ValueError(f"routing names models that are not served: {sorted(unknown)}")
        self._routing = routing
        try:
            self._route(routing)
        except StoreUnavailable as exc:
            if self._routed:
                raise  # a running replica keeps its routing and the update fails
            self._unrouted(exc)
            log.error("models not ready, routing retried in the background: %s", exc.message)
            retry_while_unavailable("routing", lambda: self._route_if_current(routing),
                                    self._unrouted)

    def _route(self, routing: Routing) -> None:
        """Resolve every model's versions, then route them all (all or nothing)."""
        resolved = {}
        for name in self.models:
            wanted = routing.of(name)
            version = {v: self.store.resolve(name, v) for v in wanted.all_versions}
            resolved[name] = (
                list(dict.fromkeys(version[v] for v in wanted.versions)),
                {version[v]: w for v, w in wanted.traffic.items()} if wanted.traffic else None,
                version[wanted.shadow] if wanted.shadow else None,
            )
        for name, (versions, traffic, shadow) in resolved.items():
            self.models[name].route(versions, traffic, shadow)
        self._routed = True

    def _route_if_current(self, routing: Routing) -> None:
        if routing is self._routing:  # a later update has routed already
            self._route(routing)

    def _unrouted(self, exc: StoreUnavailable) -> None:
        for served in self.models.values():
            served.unavailable = exc.message

    # --- admission ----------------------------------------------------------------------
    def admit(self, request: Request, model: str) -> tuple[Served, ApiKey | None]:
        """Find the model (404). ``AuthMiddleware`` has authenticated (401), authorized (403)
        and rate-limited (429) before the body was read; a route whose path it could not
        read the model from is authorized here instead."""
        key = request.scope.get(KEY_SCOPE_KEY)
        try:
            served = self.models[model]
        except KeyError:
            raise ModelNotFound(model) from None
        if key is not None and request.scope.get(ADMITTED_SCOPE_KEY) != model:
            KeyRing.authorize(key, model)
            self.limiter.check(key)
        request.scope[MODEL_SCOPE_KEY] = model
        return served, key

    def check_path(self, path_params: dict[str, Any]) -> None:
        """404 for the model (or version) a route's path names that is not served; runs
        before the body is read (``GatewayRoute``), so a bad body cannot answer first."""
        model = path_params.get("model")
        if model is None:
            return
        served = self.models.get(model)
        if served is None:
            raise ModelNotFound(model)
        if "version" in path_params:
            served.version(path_params["version"])

    # --- an answer ----------------------------------------------------------------------
    async def answer(
        self, request: Request, response: Response, served: Served, key: ApiKey | None,
        requested: str | None, raw: np.ndarray, request_params: dict[str, Any], route: str,
    ) -> tuple[str, dict[str, np.ndarray]]:
        """Choose the version, predict, record the decision (before answering) and start
        any shadow; ``request_params`` come validated (``Task.request_params``)."""
        started = time.perf_counter()
        version = served.version(requested, request.headers.get(ROUTING_KEY))
        outputs = await served.placement.run(version, raw, request_params)
        rid = request_id(request)
        if self.recorder is not None:
            record = await self.recorder.decision(
                request_id=rid, key=key, model=served.name, task=served.task, version=version,
                route=route, artifact_sha256=await served.placement.artifact_sha256(version),
                raw=raw, parameters=request_params, outputs=outputs,
                latency_ms=(time.perf_counter() - started) * 1000,
            )
            response.headers[DECISION_HEADER] = decision_id(record)
        self.metrics.outcomes(served.name, version, outputs,
                              served.task.outputs_with("decision"))
        self.drift.observe(served.name, version, raw, outputs)
        if served.shadow and served.shadow != version:
            task = asyncio.create_task(
                self._shadow(served, version, raw, request_params, outputs, rid))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        response.headers[VERSION_HEADER] = version
        return version, outputs

    async def _shadow(self, served: Served, live_version: str, raw: np.ndarray,
                      request_params: dict[str, Any], live: dict[str, np.ndarray],
                      rid: str) -> None:
        """Send a copy to the shadow version; record both answers, return neither."""
        challenger = served.shadow or ""
        try:
            outputs = await served.placement.run(challenger, raw, request_params)
        except Exception:
            log.warning("shadow %s v%s failed for request %s", served.name, challenger, rid)
            return
        same = agrees(served.task.outputs_with("decision"), live, outputs)
        self.metrics.shadow.inc(tags={"model": served.name, "challenger": challenger,
                                      "agrees": str(same).lower()})
        if self.recorder is not None:
            await self.recorder.shadow(rid, served.name, served.task, live_version, challenger,
                                       raw, live, outputs)

    # --- the ASGI app -----------------------------------------------------------------
    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(
            title="FinServe",
            version=__version__,
            description="Finance models over the Open Inference Protocol (V2), TF-Serving "
            "REST (V1) and task routes with named fields. Send `Authorization: Bearer <key>`"
            " when the server requires keys, and `x-routing-key` to keep one customer on one "
            "version during a canary.",
        )
        app.router.route_class = GatewayRoute  # strict JSON or binary tensors, every route
        setattr(app.state, PATH_CHECK, self.check_path)  # 404 before the body is read
        install_error_handlers(app)
        add_routes(app, self)
        # innermost: JSON POSTs skip FastAPI's routing (deployments.fast_routes)
        app.add_middleware(FastRoutes, routes=app.routes)
        app.add_middleware(JsonBodyMiddleware)
        app.add_middleware(BodyLimitMiddleware, max_bytes=self.args.limits.max_body_bytes,
                           timeout_s=IngressTimeouts.from_env().request_s)
        app.add_middleware(AuthMiddleware, keys=self.keys, required=self.require_auth,
                           limiter=self.limiter, models=self.models)
        app.add_middleware(RequestIdMiddleware)
        app.add_middleware(RequestMetricsMiddleware, gateway_metrics=self.metrics,
                           in_flight=self.in_flight)
        only_documented(app)
        return app
