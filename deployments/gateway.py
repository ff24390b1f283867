"""The FastAPI ingress: admit, parse, route to a version, call the pipeline, record the
decision, map errors.

Routes: Open Inference Protocol V2, TF-Serving REST V1, and one task route per model
(``POST /v1/{model}/{route}``) with named fields, all on the OpenAPI page at ``/docs``.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Body, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deployments.deploy import IngressTimeouts
from deployments.http import (
    ADMITTED_SCOPE_KEY,
    BINARY_SCOPE_KEY,
    KEY_SCOPE_KEY,
    AuthMiddleware,
    BodyLimitMiddleware,
    GatewayRoute,
    JsonBodyMiddleware,
    RequestIdMiddleware,
    causes,
    install_error_handlers,
    overloaded,
    request_id,
    unwrap,
)
from deployments.metrics import (
    MODEL_SCOPE_KEY,
    GatewayMetrics,
    RequestMetricsMiddleware,
    StageMetrics,
)
from deployments.stages import Model
from serving import __version__, dataplane
from serving.audit import Recorder, decision_id
from serving.config import AppArgs, ModelSettings, Routing
from serving.errors import (
    FinServeError,
    ModelNotFound,
    ModelUnavailable,
    RequestTimeout,
    VersionNotFound,
)
from serving.protocol import binary
from serving.protocol.v1 import PredictRequest, PredictResponse
from serving.protocol.v2 import (
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    ModelMetadata,
    ServerMetadata,
)
from serving.runtime import Batch, TaskSteps, settle_heap
from serving.security import ApiKey, KeyFile, KeyRing, RateLimiter
from serving.store import ModelStore
from serving.tasks import Step, Task, get_task
from serving.traffic import agrees as shadow_agrees
from serving.traffic import choose_version

log = logging.getLogger("finserve.gateway")
BINARY_DOC = (
    "JSON tensors, or the binary tensor data extension (as KServe and Triton clients send "
    "it): an `Inference-Header-Content-Length` header giving the length of this JSON, "
    "followed by the raw little-endian bytes of each input whose "
    "`parameters.binary_data_size` is set. Ask for binary outputs with "
    "`parameters.binary_data_output: true`."
)
READY_TIMEOUT_S = 2.0
RETRIES = 3
REPLICA_LOST = (RayActorError, ActorUnavailableError)
ROUTING_KEY = "x-routing-key"
VERSION_HEADER = "x-model-version"
#: FinServe's own id of the recorded decision (chain:seq), unique even when a client
#: reuses its x-request-id; ``finserve audit replay`` takes it
DECISION_HEADER = "x-decision-id"


@dataclass
class Served:
    """A served model as the gateway sees it: task, stage handles and version routing."""

    settings: ModelSettings
    task: Task
    # a stage's handle, or None where this replica runs it (ModelSettings.placement)
    model: DeploymentHandle | None = None
    preprocess: DeploymentHandle | None = None
    postprocess: DeploymentHandle | None = None
    steps: TaskSteps | None = None  # Preprocess and Postprocess here
    local_model: Any = None  # the Model stage's class, here
    versions: list[str] = field(default_factory=list)
    traffic: dict[str, int] | None = None
    shadow: str | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def options(self) -> dict[str, Any]:
        return self.task.options(self.settings.options)

    def version(self, requested: str | None, routing_key: str | None = None) -> str:
        """The pinned version, else the traffic split's pick, else the default."""
        if requested is None:
            if self.traffic:
                return choose_version(self.traffic, routing_key)
            return self.versions[0]
        dataplane.parse_version(requested)
        if requested not in self.pinnable:
            raise VersionNotFound(self.name, requested, self.pinnable)
        return requested

    def warm(self) -> None:
        """Ask the stages to load every routed version before traffic reaches it."""
        versions = list(dict.fromkeys(
            [*self.pinnable, *([self.shadow] if self.shadow else [])]))
        if self.steps is not None:
            self.steps.configure(versions, self.steps.options)
        if self.local_model is not None:
            self.local_model.preload(versions)
        for stage in (self.preprocess, self.model, self.postprocess):
            if stage is None:
                continue
            try:
                stage.preload.remote(versions)  # best effort: one replica each
            except Exception:  # the first request of a version will load it instead
                log.warning("could not ask %s to preload %s", self.name, versions)

    @property
    def pinnable(self) -> list[str]:
        return list(dict.fromkeys([*self.versions, *(self.traffic or {})]))

    def metadata(self) -> ModelMetadata:
        return ModelMetadata(
            name=self.name,
            versions=self.pinnable,
            inputs=[_tensor(self.task.input_spec)],
            outputs=[_tensor(s) for s in self.task.output_specs],
            parameters={"task": self.task.name, "default_version": self.versions[0]},
        )


def _replica_lost(exc: BaseException) -> bool:
    """A replica died under the request: Ray raises it directly, or (for a stage waiting on
    a dead upstream stage) as a RayServeException caused by it."""
    return any(isinstance(e, REPLICA_LOST) for e in causes(exc))


def _tensor(spec: Any) -> MetadataTensor:
    return MetadataTensor(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))


class Answer(BaseModel):
    """Task route answer: which model and version answered, one result per record."""

    model: str
    version: str
    request_id: str
    results: list[dict[str, Any]]
    summary: dict[str, Any] | None = Field(None, description="About the whole request.")


@serve.deployment
@serve.ingress()
class Gateway:
    """HTTP ingress of every served model."""

    def __init__(self, args: dict[str, Any],
                 handles: dict[str, dict[str, DeploymentHandle]]) -> None:
        self.args = AppArgs.model_validate(args)
        self.store = ModelStore(self.args.store_uri)
        self.step_metrics: dict[str, dict[str, StageMetrics]] = {}
        self.models: dict[str, Served] = {
            m.name: Served(settings=m, task=get_task(m.task_name), **handles[m.name],
                           steps=self._steps(m), local_model=self._local_model(m))
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
        self.recorder = Recorder(self.args.audit) if self.args.audit.enabled else None
        self._digests: dict[tuple[str, str], str] = {}
        self.metrics = GatewayMetrics()
        self._background: set[asyncio.Task[None]] = set()
        if not self.require_auth:
            log.warning("FinServe is running OPEN: no API key is required (security.require_auth)")
        settle_heap()

    def _steps(self, m: ModelSettings) -> TaskSteps | None:
        """Preprocess and Postprocess in this replica, when the model's settings say so."""
        if m.placement == "stage-replicas":
            return None
        self.step_metrics[m.name] = {stage: StageMetrics(m.name, stage)
                                     for stage in ("preprocess", "postprocess")}
        return TaskSteps(self.store, m.name, m.task_name, [], m.options)

    def _local_model(self, m: ModelSettings) -> Any:
        """The Model stage's own code (``@serve.batch`` over the signatures) in this
        replica, when the model's placement is the gateway."""
        if m.placement != "gateway":
            return None
        stage = Model.func_or_class  # the class under @serve.deployment
        return stage(self.store.root, m.name, m.task_name, m.model.runner_settings())

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Routing (versions, traffic splits, shadows) applied in place; versions are
        resolved in the store here, so an unknown one fails this update with a message."""
        routing = Routing.model_validate(config)
        unknown = set(routing.models) - set(self.models)
        if unknown:
            raise ValueError(f"routing names models that are not served: {sorted(unknown)}")
        resolved = {}
        for name in self.models:
            wanted = routing.of(name)
            version = {v: self.store.resolve(name, v) for v in wanted.all_versions}
            resolved[name] = (
                list(dict.fromkeys(version[v] for v in wanted.versions)),
                {version[v]: w for v, w in wanted.traffic.items()} if wanted.traffic else None,
                version[wanted.shadow] if wanted.shadow else None,
            )
        for name, (versions, traffic, shadow) in resolved.items():  # all or nothing
            served = self.models[name]
            served.versions, served.traffic, served.shadow = versions, traffic, shadow
            served.warm()

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

    # --- pipeline ---------------------------------------------------------------------
    async def run(
        self, served: Served, version: str, raw: np.ndarray, parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """The pipeline; predictions are idempotent, so a replica that dies mid-request
        (scale-down, node loss) costs a retry on another replica, not a failed request."""
        for attempt in range(1, RETRIES + 1):
            try:
                return await self._run_once(served, version, raw, parameters)
            except Exception as exc:
                if not _replica_lost(exc):
                    raise
                if attempt == RETRIES:
                    raise ModelUnavailable(
                        f"model '{served.name}' lost its replica; retry shortly") from exc
                log.warning("retrying %s after a lost replica (%s)", served.name,
                            type(exc).__name__)
        raise AssertionError("unreachable")

    async def _run_once(
        self, served: Served, version: str, raw: np.ndarray, parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        """Preprocess → Model → Postprocess: the steps in this replica around one Model
        call, or three deployments chained without awaiting the middle ones."""
        steps = served.steps
        if steps is None:
            assert served.preprocess is not None and served.postprocess is not None
            x = served.preprocess.remote(version, raw)
            scores = served.model.remote(version, x)
            outputs = served.postprocess.remote(version, scores, parameters)
            return await self._within_deadline(served, outputs, scores, x)
        metrics = self.step_metrics[served.name]
        started = time.perf_counter()
        batch = steps.preprocess(version, raw)
        metrics["preprocess"].observe(started)
        if served.local_model is not None:
            call = served.local_model(version, Batch(batch.data))
        else:
            assert served.model is not None
            call = served.model.remote(version, Batch(batch.data))
        scores = await self._within_deadline(served, call)
        started = time.perf_counter()
        outputs = steps.postprocess(version, Batch(scores.data, batch.context), parameters)
        metrics["postprocess"].observe(started)
        return outputs

    async def _within_deadline(self, served: Served, last: Awaitable[Any],
                               *upstream: DeploymentResponse) -> Any:
        """The last stage's answer within the request timeout (504, cancelling the chain);
        a stage's FinServeError comes out as itself."""
        timeout = self.args.limits.request_timeout_s
        try:
            return await asyncio.wait_for(last, timeout=timeout)
        except TimeoutError:
            for response in (last, *upstream):
                if isinstance(response, DeploymentResponse):
                    response.cancel()
            raise RequestTimeout(
                f"model '{served.name}' did not answer within {timeout:g}s"
            ) from None
        except Exception as exc:
            inner = unwrap(exc)
            if isinstance(inner, FinServeError):
                raise inner from None
            if overloaded(exc):  # a stage's queue is full: 503 with Retry-After, no wait
                raise ModelUnavailable(
                    f"model '{served.name}' is busy; retry shortly") from None
            raise

    async def answer(
        self, request: Request, response: Response, served: Served, key: ApiKey | None,
        requested: str | None, raw: np.ndarray, parameters: dict[str, Any] | None, route: str,
    ) -> tuple[str, dict[str, np.ndarray]]:
        """Route, predict, record the decision (before answering) and start any shadow."""
        started = time.perf_counter()
        parameters = served.task.parameters(parameters)
        version = served.version(requested, request.headers.get(ROUTING_KEY))
        outputs = await self.run(served, version, raw, parameters)
        rid = request_id(request)
        if self.recorder is not None:
            record = await self.recorder.decision(
                request_id=rid, key=key, model=served.name, task=served.task, version=version,
                route=route,
                artifact_sha256=await self.loaded_digest(served, version),
                raw=raw, parameters=parameters, outputs=outputs,
                latency_ms=(time.perf_counter() - started) * 1000,
            )
            response.headers[DECISION_HEADER] = decision_id(record)
        self.metrics.outcomes(served.name, version, outputs,
                              served.task.outputs_with("decision"))
        if served.shadow and served.shadow != version:
            task = asyncio.create_task(
                self._shadow(served, version, raw, parameters, outputs, rid)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        response.headers[VERSION_HEADER] = version
        return version, outputs

    async def _shadow(self, served: Served, live_version: str, raw: np.ndarray,
                      parameters: dict[str, Any], live: dict[str, np.ndarray],
                      rid: str) -> None:
        """Send a copy to the shadow version; record both answers, return neither."""
        challenger = served.shadow or ""
        try:
            outputs = await self.run(served, challenger, raw, parameters)
        except Exception:
            log.warning("shadow %s v%s failed for request %s", served.name, challenger, rid)
            return
        agrees = shadow_agrees(served.task.outputs_with("decision"), live, outputs)
        self.metrics.shadow.inc(tags={"model": served.name, "challenger": challenger,
                                      "agrees": str(agrees).lower()})
        if self.recorder is not None:
            await self.recorder.shadow(rid, served.name, served.task, live_version, challenger,
                                       raw, live, outputs)

    async def loaded_digest(self, served: Served, version: str) -> str:
        """The digest of the SavedModel that answers ``version`` as its Model stage verified
        and loaded it (every replica checks the same manifest), for the decision record."""
        key = (served.name, version)
        if key not in self._digests:
            if served.local_model is not None:
                self._digests[key] = served.local_model.artifact_sha256(version)
            else:
                assert served.model is not None
                call = served.model.artifact_sha256.remote(version)  # a full queue: busy
                self._digests[key] = await self._within_deadline(served, call)
        return self._digests[key]

    async def is_ready(self, served: Served) -> bool:
        if served.local_model is not None:
            return bool(served.local_model.ready()["ready"])
        assert served.model is not None
        try:
            state = await asyncio.wait_for(served.model.ready.remote(), timeout=READY_TIMEOUT_S)
        except Exception:  # timeout, replica starting or failed: not ready
            return False
        return bool(state["ready"])

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
        install_error_handlers(app)
        app.add_middleware(JsonBodyMiddleware)
        app.add_middleware(BodyLimitMiddleware, max_bytes=self.args.limits.max_body_bytes,
                           timeout_s=IngressTimeouts.from_env().request_s)
        app.add_middleware(AuthMiddleware, keys=self.keys, required=self.require_auth,
                           limiter=self.limiter, models=self.models)
        app.add_middleware(RequestIdMiddleware)
        app.add_middleware(RequestMetricsMiddleware, gateway_metrics=self.metrics)
        self._health_routes(app)
        self._v2_routes(app)
        self._v1_routes(app)
        for served in self.models.values():
            self._task_route(app, served)
        return app

    def _health_routes(self, app: FastAPI) -> None:
        @app.get("/v2/health/live", tags=["health"])
        async def live() -> dict[str, bool]:
            return {"live": True}

        @app.get("/v2/health/ready", tags=["health"])
        async def ready() -> JSONResponse:
            states = await asyncio.gather(*(self.is_ready(s) for s in self.models.values()))
            body = {"ready": all(states), "models": dict(zip(self.models, states, strict=True))}
            return JSONResponse(body, status_code=200 if all(states) else 503)

        @app.get("/v2", response_model=ServerMetadata, tags=["v2"])
        async def server_metadata() -> ServerMetadata:
            return ServerMetadata(version=__version__, extensions=["model_version_routing"])

    def _v2_routes(self, app: FastAPI) -> None:
        async def metadata(request: Request, model: str,
                           version: str | None = None) -> ModelMetadata:
            served, _ = self.admit(request, model)
            served.version(version)
            return served.metadata()

        async def model_ready(request: Request, model: str,
                              version: str | None = None) -> JSONResponse:
            served, _ = self.admit(request, model)
            version = served.version(version)
            ok = await self.is_ready(served)
            return JSONResponse(
                {"name": model, "version": version, "ready": ok}, status_code=200 if ok else 503
            )

        async def infer(
            request: Request, response: Response, model: str, body: InferenceRequest,
            version: str | None = None,
        ) -> InferenceResponse:
            served, key = self.admit(request, model)
            raw = dataplane.decode_v2(body, served.task, request.scope.get(BINARY_SCOPE_KEY),
                                      self.args.limits.max_instances)
            dataplane.requested_outputs(served.task, body)
            version, outputs = await self.answer(
                request, response, served, key, version, raw, dataplane.v2_parameters(body),
                "v2")
            answer, raw_outputs = dataplane.encode_v2(served.task, model, version, outputs, body)
            if not raw_outputs:
                return answer
            content, length = binary.response(answer.model_dump(exclude_none=True),
                                              raw_outputs)
            return Response(content, media_type=binary.CONTENT_TYPE, headers={
                binary.HEADER: str(length), VERSION_HEADER: version})

        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            app.add_api_route(prefix, metadata, methods=["GET"], response_model=ModelMetadata,
                              tags=["v2"], summary="Model metadata")
            app.add_api_route(prefix + "/ready", model_ready, methods=["GET"], tags=["v2"],
                              summary="Model readiness")
            app.add_api_route(prefix + "/infer", infer, methods=["POST"], tags=["v2"],
                              response_model=InferenceResponse, summary="Inference (V2)",
                              description=BINARY_DOC)

    def _v1_routes(self, app: FastAPI) -> None:
        async def status(request: Request, model: str,
                         version: str | None = None) -> dict[str, Any]:
            served, _ = self.admit(request, model)
            versions = [served.version(version)] if version else served.pinnable
            ok = await self.is_ready(served)
            return {
                "model_version_status": [
                    {
                        "version": v,
                        "state": "AVAILABLE" if ok else "LOADING",
                        "status": {"error_code": "OK", "error_message": ""},
                    }
                    for v in versions
                ]
            }

        async def predict(
            request: Request, response: Response, model: str, body: PredictRequest,
            version: str | None = None,
        ) -> PredictResponse:
            served, key = self.admit(request, model)
            raw = dataplane.decode_v1(body, served.task, self.args.limits.max_instances)
            version, outputs = await self.answer(
                request, response, served, key, version, raw, body.parameters, "v1")
            return dataplane.encode_v1(version, outputs)

        for prefix in ("/v1/models/{model}", "/v1/models/{model}/versions/{version}"):
            app.add_api_route(prefix, status, methods=["GET"], tags=["tf-serving"],
                              summary="Model version status (TF-Serving)")
            app.add_api_route(prefix + ":predict", predict, methods=["POST"],
                              response_model=PredictResponse, tags=["tf-serving"],
                              summary="Predict (TF-Serving REST)")

    def _task_route(self, app: FastAPI, served: Served) -> None:
        task, name = served.task, served.name
        request_model = create_model(
            f"{task.Record.__name__}Batch",
            __config__=ConfigDict(extra="forbid"),
            __validators__=dataplane.records_limit(self.args.limits.max_instances),
            records=(
                list[task.Record],  # type: ignore[name-defined]
                Field(min_length=1, description=f"One {task.Record.__name__} per example."),
            ),
            parameters=(
                task.Parameters | None if task.Parameters else None,  # type: ignore[operator]
                Field(None, description="Per-request parameters of this task."),
            ),
        )

        async def handle(
            request: Request,
            response: Response,
            body: request_model = Body(),  # type: ignore[valid-type]
            version: str | None = Query(None, description="Pin a served version."),
        ) -> Answer:
            _, key = self.admit(request, name)
            raw = await dataplane.decode_records_within(
                body.records, task, self.args.limits.request_timeout_s)
            parameters = task.parameters(
                body.parameters.model_dump() if body.parameters else None)
            version_, outputs = await self.answer(
                request, response, served, key, version, raw, parameters, "task")
            return Answer(
                model=name, version=version_, request_id=request_id(request),
                results=dataplane.rows(outputs),
                summary=task.summarize(outputs, Step({}, served.options, parameters)),
            )

        app.add_api_route(
            f"/v1/{name}/{task.route}", handle, methods=["POST"], response_model=Answer,
            tags=["tasks"], summary=task.description,
        )
