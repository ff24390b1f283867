"""The V2 infer route's hot path as plain ASGI, beside its FastAPI route.

A JSON ``POST /v2/models/{model}[/versions/{version}]/infer`` is answered here, inside the
gateway's middlewares (metrics, request id, keys, body limit) but without FastAPI's
routing, parameter solving and response validation, which cost more per request than
parsing and validating the body itself (levers row 38 in benchmarks/levers.md). It
answers what the FastAPI route answers, errors included: the same path match
(the route's own ``matches``), checks in the same order, ``routes.v2_infer`` for the
inference and ``http.error_answer`` for every error. The FastAPI route stays: it
documents the route in OpenAPI and answers binary tensor bodies.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.http import check_named, error_answer, strict_json
from deployments.routes import v2_infer
from serving.protocol import binary
from serving.protocol.v2 import InferenceRequest

if TYPE_CHECKING:
    from deployments.gateway import Gateway

_HEADER = binary.HEADER.lower().encode()


class V2InferFastPath:
    """Answers JSON V2 inference requests; passes everything else to ``app``."""

    def __init__(self, app: ASGIApp, gateway: Gateway, routes: list[Any]) -> None:
        self.app = app
        self.gateway = gateway
        #: the FastAPI routes this path answers for, matched as the router matches them
        self.routes = [r for r in routes if isinstance(r, APIRoute)
                       and r.path.startswith("/v2/models/") and r.path.endswith("/infer")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._match(scope)
        if matched is None:
            await self.app(scope, receive, send)
            return
        scope.update(matched)  # route, endpoint, path_params: as the router sets them
        request = Request(scope, receive)
        try:
            answer = await self._answer(request)
        except Exception as exc:  # every error answers as on FastAPI's routes
            answer = error_answer(request, exc)
        await answer(scope, receive, send)

    def _match(self, scope: Scope) -> dict[str, Any] | None:
        """The router's child scope for a JSON POST to an infer route; None otherwise."""
        if scope["type"] != "http" or scope.get("method") != "POST":
            return None
        if any(name == _HEADER for name, _ in scope.get("headers") or ()):
            return None  # binary tensor data: FastAPI's route reads it
        for route in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return child
        return None

    async def _answer(self, request: Request) -> Response:
        params = request.path_params
        check_named(request)  # 404 for the model or version before the body is read
        body = await _body(request)
        # FastAPI's sub-response: the headers ``Gateway.answer`` sets go on the answer
        response = Response()
        del response.headers["content-length"]
        version = params.get("version", request.query_params.get("version"))
        answer = await v2_infer(self.gateway, request, response, params["model"], body,
                                version)
        if isinstance(answer, Response):
            return answer
        whole = Response(_dump(answer), media_type="application/json")
        whole.headers.raw.extend(response.headers.raw)
        return whole


async def _body(request: Request) -> InferenceRequest:
    """The body as FastAPI reads and validates a ``body: InferenceRequest`` parameter
    (``http.GatewayRequest``'s strict JSON), with the same errors."""
    try:
        data = await request.body()
    except Exception as exc:
        raise HTTPException(400, "There was an error parsing the body") from exc
    if not data:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        value = strict_json(data)
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos),
                                       "msg": "JSON decode error", "input": {},
                                       "ctx": {"error": exc.msg}}]) from None
    try:
        return InferenceRequest.model_validate(value, from_attributes=True)  # as FastAPI
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _dump(answer: Any) -> bytes:
    """The answer's JSON as FastAPI writes a ``response_model=InferenceResponse``."""
    return answer.__pydantic_serializer__.to_json(answer, by_alias=True)
