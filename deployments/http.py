"""HTTP plumbing of the gateway: one error shape, a body size limit, request ids."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import FinServeError
from serving.protocol import binary

log = logging.getLogger("finserve.gateway")
REQUEST_ID = "x-request-id"


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    # a message may quote the request: text that is not UTF-8 is escaped, never a 500
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": safe}, status_code=status, headers=headers)


def unwrap(exc: BaseException) -> BaseException:
    """The user-level error inside a Ray task error, if any."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: Ray task errors' ``cause`` and the ``__cause__`` chain."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        inner = unwrap(seen)
        seen = inner if inner is not seen else seen.__cause__
    return chain


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "request body is not valid JSON"
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errors):
        return 400, "request body is empty; send a JSON object"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as ``{"error": ...}`` with the status that says why."""

    @app.exception_handler(FinServeError)
    async def _finserve(_: Request, exc: FinServeError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return error_response(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        inner = unwrap(exc)
        if isinstance(inner, FinServeError):
            return error_response(inner.status_code, inner.message, inner.headers)
        if isinstance(inner, RecursionError):
            return error_response(400, "request body nests too deeply")
        if overloaded(inner):
            return error_response(503, "the model is busy; retry shortly", {"Retry-After": "1"})
        log.exception("unexpected error on %s", request.url.path)
        rid = request.headers.get(REQUEST_ID, "")
        return error_response(500, f"internal error (request id {rid})")


def overloaded(exc: BaseException) -> bool:
    """Ray Serve's overload and unavailability errors (a full queue): a 503, not a 500."""
    from ray.serve import exceptions as serve_errors

    busy = tuple(
        getattr(serve_errors, name)
        for name in ("BackPressureError", "DeploymentUnavailableError")
        if hasattr(serve_errors, name)
    )
    return bool(busy) and any(isinstance(e, busy) for e in causes(exc))


class BodyLimitMiddleware:
    """Reject bodies over ``max_bytes`` with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._reject(send, headers)
            return
        seen = 0
        rejected = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def guarded(message: Message) -> None:
            # once the body is too large, whatever the app answers is replaced by the 413
            nonlocal rejected
            if seen > self.max_bytes:
                if not rejected:
                    rejected = True
                    await self._reject(send, headers)
                return
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except _BodyTooLarge:
            if not rejected:
                await self._reject(send, headers)

    async def _reject(self, send: Send, headers: dict[bytes, bytes]) -> None:
        response = error_response(
            413, f"request body is larger than the limit of {self.max_bytes} bytes"
        )
        rid = headers.get(REQUEST_ID.encode())
        if rid:
            response.headers[REQUEST_ID] = rid.decode("latin-1")
        await response({"type": "http"}, _no_receive, send)


class JsonBodyMiddleware:
    """Read every POST body as JSON, as TF Serving and KServe do, whatever content type a
    client such as ``curl -d`` declares; the route's model then validates it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            # in place: the outer middlewares read what the router and routes add to scope
            scope["headers"] = headers
        await self.app(scope, receive, send)


#: ASGI scope key under which the authenticated ``ApiKey`` (or None) travels
KEY_SCOPE_KEY = "finserve.key"
PUBLIC_PATHS = ("/v2/health/", "/docs", "/openapi.json", "/redoc")


class AuthMiddleware:
    """Authenticate before anything else reads the body: a call without a valid key gets
    401 whatever it sends. Health probes and the API docs stay open."""

    def __init__(self, app: ASGIApp, keys: Any, required: bool) -> None:
        self.app = app
        self.keys = keys
        self.required = required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.keys is None:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization")
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))  # route prefix
        if header is None and (not self.required or path.startswith(PUBLIC_PATHS)):
            scope[KEY_SCOPE_KEY] = None
            await self.app(scope, receive, send)
            return
        try:
            scope[KEY_SCOPE_KEY] = self.keys.authenticate(header.decode("latin-1")
                                                          if header else None)
        except FinServeError as exc:
            await error_response(exc.status_code, exc.message, exc.headers)(
                scope, receive, send)
            return
        await self.app(scope, receive, send)


#: ASGI scope key under which a binary-extension request's decoded tensors travel
BINARY_SCOPE_KEY = "finserve.binary_inputs"


def strict_json(data: bytes) -> Any:
    """JSON as RFC 8259 has it, parsed by pydantic-core: a string holding a lone surrogate
    (which no answer could echo as UTF-8) or nesting past 200 levels is a decode error."""
    try:
        return pydantic_core.from_json(data)
    except ValueError as exc:
        raise json.JSONDecodeError(str(exc), data.decode("utf-8", "replace"), 0) from None


class GatewayRequest(Request):
    """A request body as the gateway reads it: strict JSON, or the V2 binary tensor data
    extension, whose JSON header is the body and whose tensors are decoded once into
    ``scope[BINARY_SCOPE_KEY]``."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            length = self.headers.get(binary.HEADER)
            if length is None:
                self._json = strict_json(body)
            else:
                try:
                    self._json, self.scope[BINARY_SCOPE_KEY] = binary.split(body, length)
                except FinServeError as exc:  # FastAPI makes anything else a bare 400
                    raise HTTPException(exc.status_code, exc.message) from None
        return self._json


class GatewayRoute(APIRoute):
    """Every gateway route reads its body through ``GatewayRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(GatewayRequest(request.scope, request.receive))

        return route


class _BodyTooLarge(Exception):
    pass


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def request_id(request: Request) -> str:
    """The request id Ray Serve's proxy assigned (the caller's ``x-request-id`` if sent);
    Serve also returns it in the response's ``x-request-id`` header."""
    return request.headers.get(REQUEST_ID) or uuid.uuid4().hex
