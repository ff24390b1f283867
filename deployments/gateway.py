"""The FastAPI ingress: parse, validate, route to a version, call the pipeline, map errors.

Routes: Open Inference Protocol V2, TF-Serving REST V1, and one task route per model
(``POST /v1/{model}/{route}``) with named fields, all on the OpenAPI page at ``/docs``.
"""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.config import AppArgs, ModelSettings
from deployments.http import (
    BodyLimitMiddleware,
    JsonBodyMiddleware,
    install_error_handlers,
    request_id,
    unwrap,
)
from serving import __version__, dataplane
from serving.errors import FinServeError, ModelNotFound, RequestTimeout, VersionNotFound
from serving.protocol.v1 import PredictRequest, PredictResponse
from serving.protocol.v2 import (
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    ModelMetadata,
    ServerMetadata,
)
from serving.tasks import Step, Task, get_task

READY_TIMEOUT_S = 2.0


@dataclass
class Served:
    """A served model as the gateway sees it: task, versions and stage handles."""

    settings: ModelSettings
    task: Task
    preprocess: DeploymentHandle
    model: DeploymentHandle
    postprocess: DeploymentHandle
    versions: list[str] = field(default_factory=list)

    @property
    def options(self) -> dict[str, Any]:
        return self.task.options(self.settings.options)

    def version(self, requested: str | None) -> str:
        if requested is None:
            return self.versions[0]
        dataplane.parse_version(requested)
        if requested not in self.versions:
            raise VersionNotFound(self.settings.name, requested, self.versions)
        return requested

    def metadata(self) -> ModelMetadata:
        return ModelMetadata(
            name=self.settings.name,
            versions=self.versions,
            inputs=[_tensor(self.task.input_spec)],
            outputs=[_tensor(s) for s in self.task.output_specs],
            parameters={"task": self.task.name, "default_version": self.versions[0]},
        )


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
        self.models: dict[str, Served] = {
            m.name: Served(settings=m, task=get_task(m.task_name), **handles[m.name])
            for m in self.args.models
        }

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Served versions per model, the first answering requests that name none."""
        for name, versions in config["versions"].items():
            self.models[name].versions = list(versions)

    # --- pipeline ---------------------------------------------------------------------
    def served(self, model: str) -> Served:
        try:
            return self.models[model]
        except KeyError:
            raise ModelNotFound(model) from None

    async def run(
        self, served: Served, version: str, raw: np.ndarray, parameters: dict[str, Any] | None
    ) -> dict[str, np.ndarray]:
        """Preprocess → Model → Postprocess, chained without awaiting the middle stages."""
        dataplane.check_size(raw, self.args.limits.max_instances)
        parameters = served.task.parameters(parameters)
        x = served.preprocess.remote(version, raw)
        scores = served.model.remote(version, x)
        outputs = served.postprocess.remote(version, scores, parameters)
        timeout = self.args.limits.request_timeout_s
        try:
            return await asyncio.wait_for(outputs, timeout=timeout)
        except TimeoutError:
            for response in (outputs, scores, x):
                response.cancel()
            raise RequestTimeout(
                f"model '{served.settings.name}' did not answer within {timeout:g}s"
            ) from None
        except Exception as exc:
            inner = unwrap(exc)
            if isinstance(inner, FinServeError):
                raise inner from None
            raise

    async def is_ready(self, served: Served) -> bool:
        try:
            state = await asyncio.wait_for(
                served.model.ready.remote(), timeout=READY_TIMEOUT_S
            )
        except Exception:  # timeout, replica starting or failed: not ready
            return False
        return bool(state["ready"])

    # --- the ASGI app -----------------------------------------------------------------
    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(
            title="FinServe",
            version=__version__,
            description="Finance models over the Open Inference Protocol (V2), TF-Serving "
            "REST (V1) and task routes with named fields.",
        )
        install_error_handlers(app)
        app.add_middleware(JsonBodyMiddleware)
        app.add_middleware(BodyLimitMiddleware, max_bytes=self.args.limits.max_body_bytes)
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
        async def metadata(model: str, version: str | None = None) -> ModelMetadata:
            served = self.served(model)
            served.version(version)
            return served.metadata()

        async def model_ready(model: str, version: str | None = None) -> JSONResponse:
            served = self.served(model)
            version = served.version(version)
            ok = await self.is_ready(served)
            return JSONResponse(
                {"name": model, "version": version, "ready": ok}, status_code=200 if ok else 503
            )

        async def infer(
            request: Request, model: str, body: InferenceRequest, version: str | None = None
        ) -> InferenceResponse:
            served = self.served(model)
            version = served.version(version)
            raw = dataplane.decode_v2(body, served.task)
            outputs = await self.run(served, version, raw, body.parameters)
            return dataplane.encode_v2(served.task, model, version, outputs, body)

        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            app.add_api_route(prefix, metadata, methods=["GET"], response_model=ModelMetadata,
                              tags=["v2"], summary="Model metadata")
            app.add_api_route(prefix + "/ready", model_ready, methods=["GET"], tags=["v2"],
                              summary="Model readiness")
            app.add_api_route(prefix + "/infer", infer, methods=["POST"], tags=["v2"],
                              response_model=InferenceResponse, summary="Inference (V2)")

    def _v1_routes(self, app: FastAPI) -> None:
        async def status(model: str, version: str | None = None) -> dict[str, Any]:
            served = self.served(model)
            versions = [served.version(version)] if version else served.versions
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
            model: str, body: PredictRequest, version: str | None = None
        ) -> PredictResponse:
            served = self.served(model)
            version = served.version(version)
            raw = dataplane.decode_v1(body, served.task)
            outputs = await self.run(served, version, raw, body.parameters)
            return dataplane.encode_v1(version, outputs)

        for prefix in ("/v1/models/{model}", "/v1/models/{model}/versions/{version}"):
            app.add_api_route(prefix, status, methods=["GET"], tags=["tf-serving"],
                              summary="Model version status (TF-Serving)")
            app.add_api_route(prefix + ":predict", predict, methods=["POST"],
                              response_model=PredictResponse, tags=["tf-serving"],
                              summary="Predict (TF-Serving REST)")

    def _task_route(self, app: FastAPI, served: Served) -> None:
        task, name = served.task, served.settings.name
        request_model = create_model(
            f"{task.Record.__name__}Batch",
            __config__=ConfigDict(extra="forbid"),
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
            body: request_model = Body(),  # type: ignore[valid-type]
            version: str | None = Query(None, description="Pin a served version."),
        ) -> Answer:
            version_ = served.version(version)
            raw = dataplane.decode_records(body.records, task)
            parameters = task.parameters(body.parameters)
            outputs = await self.run(served, version_, raw, parameters)
            return Answer(
                model=name, version=version_, request_id=request_id(request),
                results=dataplane.rows(outputs),
                summary=task.summarize(outputs, Step({}, served.options, parameters)),
            )

        app.add_api_route(
            f"/v1/{name}/{task.route}", handle, methods=["POST"], response_model=Answer,
            tags=["tasks"], summary=task.description,
        )

