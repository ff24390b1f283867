"""The gateway's JSON POST routes (V2 inference, TF-Serving predict, the task routes)
answered as plain ASGI, beside their FastAPI routes.

Inside the gateway's middlewares (metrics, request id, keys, body limit), a JSON POST to
one of these routes is matched by the route's own ``matches``, checked (``PATH_CHECK``)
before its body is read, its body read and validated as FastAPI reads a ``body: Model``
parameter, and handed to the route's own endpoint; its answer is written by the response
model's serializer and any error by ``http.error_answer``, the FastAPI routes' own. What is
skipped is FastAPI's routing, parameter solving, response validation and its exception
and exit-stack layers: about 0.1 ms of CPU per request (levers row 38 in
benchmarks/levers.md). The FastAPI routes stay: they document the API (OpenAPI) and answer
what this path leaves (binary tensor bodies, every other route).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.http import check_named, error_answer, strict_json
from serving.protocol import binary

#: what an endpoint may take besides its path parameters to be answered here
_KNOWN = frozenset({"request", "response", "body", "version"})
_BINARY = binary.HEADER.lower().encode()


@dataclass(frozen=True)
class FastRoute:
    """A route this path answers: the FastAPI route and its body's model."""

    route: APIRoute
    body: type[BaseModel]


def fast_routes(routes: Iterable[Any]) -> list[FastRoute]:
    """The POST routes whose endpoint takes a JSON ``body`` model, the request, the
    response, ``version`` and its path parameters, and nothing else."""
    found = []
    for route in routes:
        if not isinstance(route, APIRoute) or route.methods != {"POST"}:
            continue
        params = inspect.signature(route.endpoint).parameters
        body = params["body"].annotation if "body" in params else None
        if (isinstance(body, type) and issubclass(body, BaseModel)
                and set(params) <= _KNOWN | set(route.param_convertors)):
            found.append(FastRoute(route, body))
    return found


class FastRoutes:
    """Answers JSON requests to ``routes``; passes everything else to ``app``."""

    def __init__(self, app: ASGIApp, routes: Iterable[Any]) -> None:
        self.app = app
        self.routes = fast_routes(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._match(scope)
        if matched is None:
            await self.app(scope, receive, send)
            return
        fast, child = matched
        scope.update(child)  # route, endpoint, path_params: as the router sets them
        request = Request(scope, receive)
        try:
            answer = await _answer(fast, request)
        except Exception as exc:  # every error answers as on the FastAPI routes
            answer = error_answer(request, exc)
        await answer(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[FastRoute, dict[str, Any]] | None:
        """The route and the router's child scope of a JSON POST to one of the routes."""
        if scope["type"] != "http" or scope.get("method") != "POST":
            return None
        if any(name == _BINARY for name, _ in scope.get("headers") or ()):
            return None  # binary tensor data: the FastAPI route reads it
        for fast in self.routes:
            match, child = fast.route.matches(scope)
            if match is Match.FULL:
                return fast, child
        return None


async def _answer(fast: FastRoute, request: Request) -> Response:
    check_named(request)  # 404 for the model or version before the body is read
    body = await _body(request, fast.body)
    # FastAPI's sub-response: the headers the endpoint sets go on the answer
    response = Response()
    del response.headers["content-length"]
    params = request.path_params
    version = params.get("version", request.query_params.get("version"))
    answer = await fast.route.endpoint(request=request, response=response, body=body,
                                       **{**params, "version": version})
    if isinstance(answer, Response):
        return answer
    whole = Response(answer.__pydantic_serializer__.to_json(answer, by_alias=True),
                     media_type="application/json")
    whole.headers.raw.extend(response.headers.raw)
    return whole


async def _body(request: Request, model: type[BaseModel]) -> Any:
    """The body as FastAPI reads and validates a ``body: Model`` parameter (with
    ``http.GatewayRequest``'s strict JSON), with the same errors."""
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
        return model.model_validate(value, from_attributes=True)  # as FastAPI validates
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
