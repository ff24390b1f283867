"""HTTP plumbing of the gateway: one error shape, admission (keys, scopes, rates) before the
body is read, a body size and time limit, request ids."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import pydantic_core
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import ErrorBody, FinServeError
from serving.protocol import binary
from serving.security import ApiKey, KeyRing

log = logging.getLogger("finserve.gateway")
REQUEST_ID = "x-request-id"


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    # a message may quote the request: text that is not UTF-8 is escaped, never a 500
    safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(ErrorBody(error=safe).model_dump(), status_code=status, headers=headers)


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
    for kind in (FinServeError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, _handled)


async def _handled(request: Request, exc: Exception) -> JSONResponse:
    return error_answer(request, exc)


def error_answer(request: Request, exc: BaseException) -> JSONResponse:
    """The answer to any error a request raised, on every HTTP route (the FastAPI routes'
    exception handlers and their plain ASGI path, ``deployments.fast_routes``)."""
    if isinstance(exc, FinServeError):
        return error_response(exc.status_code, exc.message, exc.headers)
    if isinstance(exc, RequestValidationError):
        return error_response(*_validation_message(exc))
    if isinstance(exc, StarletteHTTPException):
        message = (exc.status_code == 404 and _unknown_model(request)) or str(exc.detail)
        return error_response(exc.status_code, message, getattr(exc, "headers", None))
    status, message, headers = error_of(exc, request.url.path,
                                        request.headers.get(REQUEST_ID, ""))
    return error_response(status, message, headers)


def error_of(exc: BaseException, where: str, rid: str
             ) -> tuple[int, str, dict[str, str] | None]:
    """The status, message and headers of any error a request raised (a FinServeError's
    own, Ray's overload a 503, anything else a logged 500), whatever the protocol."""
    inner = unwrap(exc)
    if isinstance(inner, FinServeError):
        return inner.status_code, inner.message, inner.headers
    if isinstance(inner, RecursionError):
        return 400, "request body nests too deeply", None
    if overloaded(inner):
        return 503, "the model is busy; retry shortly", {"Retry-After": "1"}
    log.exception("unexpected error on %s", where)
    return 500, f"internal error (request id {rid})", None


def _unknown_model(request: Request) -> str | None:
    """Why no route matched, when the path names a model that is not served (a task route
    ``/v1/{model}/{route}`` exists only for a served model)."""
    model = model_in_path(request.scope["path"].removeprefix(request.scope.get("root_path", "")))
    check = getattr(request.app.state, PATH_CHECK, None)
    if model is None or check is None:
        return None
    try:
        check({"model": model})
    except FinServeError as exc:
        return exc.message
    return None


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
    """Reject bodies over ``max_bytes`` with 413, by header or while streaming, and bodies
    still arriving ``timeout_s`` after the request reached the gateway with 408 (a slow
    upload must not hold a replica's request slot)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send, headers, self._too_large())
            return
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        state: dict[str, Any] = {"seen": 0, "complete": False, "refusal": None, "sent": False}

        async def limited() -> Message:
            if state["complete"] or deadline is None:  # later reads wait for a disconnect
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), deadline - time.monotonic())
                except TimeoutError:
                    state["refusal"] = self._too_slow()
                    raise _Refused from None
            state["complete"] = message["type"] != "http.request" or not message.get(
                "more_body", False)
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.max_bytes:
                    state["refusal"] = self._too_large()
                    raise _Refused
            return message

        async def guarded(message: Message) -> None:
            # once the body is refused, whatever the app answers is replaced by the refusal
            if state["refusal"] is None:
                await send(message)
            elif not state["sent"]:
                state["sent"] = True
                await self._refuse(send, headers, state["refusal"])

        try:
            await self.app(scope, limited, guarded)
        except _Refused:
            if not state["sent"]:
                state["sent"] = True
                await self._refuse(send, headers, state["refusal"])

    def _too_large(self) -> JSONResponse:
        return error_response(
            413, f"request body is larger than the limit of {self.max_bytes} bytes")

    def _too_slow(self) -> JSONResponse:
        return error_response(408, f"request body not received within {self.timeout_s:g}s",
                              {"Connection": "close"})

    @staticmethod
    async def _refuse(send: Send, headers: dict[bytes, bytes], response: JSONResponse) -> None:
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


#: ASGI scope key of the model ``AuthMiddleware`` authorized and rate-limited the key for
ADMITTED_SCOPE_KEY = "finserve.admitted_model"


def model_in_path(path: str) -> str | None:
    """The model a gateway route names in its path: ``/v2/models/{model}...``,
    ``/v1/models/{model}[:predict]...`` or the task route ``/v1/{model}/{route}``."""
    parts = path.split("/")
    if len(parts) >= 4 and parts[1] in ("v1", "v2") and parts[2] == "models":
        name = parts[3]
        if parts[1] == "v1" and len(parts) == 4:  # /v1/models/{model}:predict
            name = name.removesuffix(":predict")
        return name or None
    if len(parts) == 4 and parts[1] == "v1" and parts[2] and parts[3]:
        return parts[2]
    return None


class AuthMiddleware:
    """Admission before anything reads the body: a call without a valid key gets 401, a key
    that may not call the served model its path names 403, and one over its rate 429,
    whatever the body holds. Health probes and the API docs stay open; a model that is not
    served goes on to its 404. ``keys`` is a ``KeyRing`` or a ``KeyFile`` (re-read when it
    changes)."""

    def __init__(self, app: ASGIApp, keys: Any, required: bool, limiter: Any = None,
                 models: Iterable[str] = ()) -> None:
        self.app = app
        self.keys = keys
        self.required = required
        self.limiter = limiter
        self.models = frozenset(models)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.keys is None:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization")
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))  # route prefix
        try:
            key = authenticate(self.keys, self.required,
                               header.decode("latin-1") if header else None,
                               public=path.startswith(PUBLIC_PATHS))
            model = model_in_path(path)
            if key is not None and model in self.models:
                self.admit(key, model)
                scope[ADMITTED_SCOPE_KEY] = model
        except FinServeError as exc:
            await error_response(exc.status_code, exc.message, exc.headers)(
                scope, receive, send)
            return
        scope[KEY_SCOPE_KEY] = key
        await self.app(scope, receive, send)

    def admit(self, key: ApiKey, model: str) -> None:
        """403 for a model the key may not call, 429 over the key's rate."""
        KeyRing.authorize(key, model)
        if self.limiter is not None:
            self.limiter.check(key)


def authenticate(keys: Any, required: bool, header: str | None,
                 public: bool = False) -> ApiKey | None:
    """The caller's key from its ``Authorization`` value (401 for one that is not valid,
    or for none when keys are required and the call is not ``public``); None for a call
    without a key that may go on without one, and for every call when no key file is set."""
    if keys is None or (header is None and (not required or public)):
        return None
    return keys.authenticate(header)


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


#: ``app.state`` attribute of the check of a route's path parameters (``model``, ``version``)
#: that runs before the body is read: an unknown model or version is a 404 whatever the body
PATH_CHECK = "check_path"


class GatewayRoute(APIRoute):
    """Every gateway route checks the model its path names (``PATH_CHECK``), then reads
    its body through ``GatewayRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            check_named(request)
            return await handler(GatewayRequest(request.scope, request.receive))

        return route


def check_named(request: Request) -> None:
    """The app's ``PATH_CHECK`` of the model and version a request names, if it has one."""
    check = getattr(request.app.state, PATH_CHECK, None)
    if check is not None:
        check(_named(request))


def _named(request: Request) -> dict[str, Any]:
    """The model and version a request names: in its path parameters, the model of a task
    route's fixed path, and a version pinned with ``?version=``."""
    named = dict(request.path_params)
    path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    if "model" not in named and (model := model_in_path(path)):
        named["model"] = model
    pinned = request.query_params.get("version")
    if pinned is not None:
        named.setdefault("version", pinned)
    return named


class _Refused(Exception):
    """The body was refused (too large or too slow); the refusal is the answer."""


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


#: what an x-request-id may be: it goes into logs and the decision trail
REQUEST_ID_FORMAT = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID_RULE = "x-request-id must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'"


class RequestIdMiddleware:
    """Refuse an ``x-request-id`` longer than 128 characters or outside ``A-Za-z0-9._:-``
    (400) before anything else reads the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers") or []:
                if name == b"x-request-id" and not REQUEST_ID_FORMAT.fullmatch(value):
                    await error_response(400, REQUEST_ID_RULE)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def request_id(request: Request) -> str:
    """The request id Ray Serve's proxy assigned (the caller's ``x-request-id`` if sent);
    Serve also returns it in the response's ``x-request-id`` header."""
    return request.headers.get(REQUEST_ID) or uuid.uuid4().hex
