"""The gateway's routes: health, Open Inference Protocol V2, TF-Serving REST V1, and one
task route per model (``POST /v1/{model}/{route}``) with named fields.

Each route decodes its protocol, hands the raw batch to ``Gateway.answer`` and encodes what
comes back; admission, version choice, the pipeline and the record are the gateway's.
(No ``from __future__ import annotations``: FastAPI reads the task route's body model from
its annotation at run time.)
"""

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import Body, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse

from deployments import responses as documented
from deployments.http import BINARY_SCOPE_KEY, request_id
from deployments.served import Served
from serving import __version__, dataplane
from serving.protocol import binary
from serving.protocol.task_route import TaskAnswer, request_params, task_request
from serving.protocol.v1 import PredictRequest, PredictResponse
from serving.protocol.v2 import InferenceRequest, InferenceResponse, ModelMetadata, ServerMetadata
from serving.tasks import PostprocessContext

if TYPE_CHECKING:
    from deployments.gateway import Gateway

BINARY_DOC = (
    "JSON tensors, or the binary tensor data extension (as KServe and Triton clients send "
    "it): an `Inference-Header-Content-Length` header giving the length of this JSON, "
    "followed by the raw little-endian bytes of each input whose "
    "`parameters.binary_data_size` is set. Ask for binary outputs with "
    "`parameters.binary_data_output: true`."
)
VERSION_HEADER = "x-model-version"


def add_routes(app: FastAPI, gateway: "Gateway") -> None:
    """Every route of the gateway's app."""
    _health_routes(app, gateway)
    _v2_routes(app, gateway)
    _v1_routes(app, gateway)
    for served in gateway.models.values():
        _task_route(app, gateway, served)


def describe_server() -> ServerMetadata:
    """What the server says of itself (``GET /v2``, gRPC ``ServerMetadata``)."""
    return ServerMetadata(version=__version__, extensions=["model_version_routing"])


async def readiness(gateway: "Gateway") -> dict[str, bool]:
    """Whether each served model is ready to answer, by name."""
    models = gateway.models
    states = await asyncio.gather(*(s.ready() for s in models.values()))
    return dict(zip(models, states, strict=True))


def _health_routes(app: FastAPI, gateway: "Gateway") -> None:
    @app.get("/v2/health/live", tags=["health"], responses=documented.GENERAL)
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["health"], response_model=documented.HealthReady,
             responses=documented.HEALTH_READY)
    async def ready() -> JSONResponse:
        states = await readiness(gateway)
        ok = all(states.values())
        return JSONResponse({"ready": ok, "models": states}, status_code=200 if ok else 503)

    @app.get("/v2", response_model=ServerMetadata, tags=["v2"], responses=documented.GENERAL)
    async def server_metadata() -> ServerMetadata:
        return describe_server()


def _v2_routes(app: FastAPI, gateway: "Gateway") -> None:
    async def metadata(request: Request, model: str,
                       version: str | None = None) -> ModelMetadata:
        served, _ = gateway.admit(request, model)
        served.version(version)
        return served.metadata()

    async def model_ready(request: Request, model: str,
                          version: str | None = None) -> JSONResponse:
        served, _ = gateway.admit(request, model)
        version = served.version(version)
        ok = await served.ready()
        return JSONResponse(
            {"name": model, "version": version, "ready": ok}, status_code=200 if ok else 503
        )

    async def infer(
        request: Request, response: Response, model: str, body: InferenceRequest,
        version: str | None = None,
    ) -> InferenceResponse | Response:
        served, key = gateway.admit(request, model)
        raw = dataplane.decode_v2(body, served.task, request.scope.get(BINARY_SCOPE_KEY),
                                  gateway.args.limits.max_instances)
        dataplane.requested_outputs(served.task, body)
        params = served.task.request_params(dataplane.v2_parameters(body))
        version, outputs = await gateway.answer(
            request, response, served, key, version, raw, params, "v2")
        answer, raw_outputs = dataplane.encode_v2(served.task, model, version, outputs, body)
        if not raw_outputs:
            return answer
        content, length = binary.response(answer.model_dump(exclude_none=True), raw_outputs)
        whole = Response(content, media_type=binary.CONTENT_TYPE,
                         headers={binary.HEADER: str(length)})
        whole.headers.update(response.headers)  # the version and decision id, as in JSON
        return whole

    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.add_api_route(prefix, metadata, methods=["GET"], response_model=ModelMetadata,
                          tags=["v2"], summary="Model metadata", responses=documented.MODEL)
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"], tags=["v2"],
                          response_model=documented.ModelReady, summary="Model readiness",
                          responses=documented.MODEL_READY)
        app.add_api_route(prefix + "/infer", infer, methods=["POST"], tags=["v2"],
                          response_model=InferenceResponse, summary="Inference (V2)",
                          description=BINARY_DOC, responses=documented.PREDICT)


def _v1_routes(app: FastAPI, gateway: "Gateway") -> None:
    async def status(request: Request, model: str,
                     version: str | None = None) -> dict[str, Any]:
        served, _ = gateway.admit(request, model)
        versions = [served.version(version)] if version else served.pinnable
        ok = await served.ready()
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
        served, key = gateway.admit(request, model)
        raw = dataplane.decode_v1(body, served.task, gateway.args.limits.max_instances)
        params = served.task.request_params(body.parameters)
        version, outputs = await gateway.answer(
            request, response, served, key, version, raw, params, "v1")
        return dataplane.encode_v1(version, outputs)

    for prefix in ("/v1/models/{model}", "/v1/models/{model}/versions/{version}"):
        app.add_api_route(prefix, status, methods=["GET"], tags=["tf-serving"],
                          summary="Model version status (TF-Serving)",
                          responses=documented.MODEL)
        app.add_api_route(prefix + ":predict", predict, methods=["POST"],
                          response_model=PredictResponse, tags=["tf-serving"],
                          summary="Predict (TF-Serving REST)", responses=documented.PREDICT)


def _task_route(app: FastAPI, gateway: "Gateway", served: Served) -> None:
    task, name, limits = served.task, served.name, gateway.args.limits
    request_model = task_request(task, limits.max_instances)

    async def handle(
        request: Request,
        response: Response,
        body: request_model = Body(),  # type: ignore[valid-type]
        version: str | None = Query(None, description="Pin a served version."),
    ) -> TaskAnswer:
        _, key = gateway.admit(request, name)
        raw = await dataplane.decode_records_within(body.records, task,
                                                    limits.request_timeout_s)
        params = request_params(task, body)
        version_, outputs = await gateway.answer(
            request, response, served, key, version, raw, params, "task")
        return TaskAnswer(
            model=name, version=version_, request_id=request_id(request),
            results=dataplane.rows(outputs),
            summary=task.summarize(outputs, PostprocessContext({}, served.options, params)),
        )

    app.add_api_route(
        f"/v1/{name}/{task.route}", handle, methods=["POST"], response_model=TaskAnswer,
        tags=["tasks"], summary=task.description, responses=documented.PREDICT,
    )
