"""The statuses each gateway route can return, for the OpenAPI document: one table of
every error status (the body is always ``ErrorBody``), and the groups of it that each kind
of route uses, built once and shared by the routes (``deployments.routes``)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from serving.errors import ErrorBody

#: every error status the gateway sends, and why (``deployments.http``, ``serving.errors``)
ERRORS: dict[int, str] = {
    400: "Malformed request: a body that is not JSON (or empty, or nested too deeply) or "
         "not of the protocol's form, an `x-request-id` outside 1-128 characters of "
         "`A-Za-z0-9._:-`, or a version that is not a number.",
    401: "No valid API key (`Authorization: Bearer <key>`), when the server requires keys "
         "or a key is sent.",
    403: "The API key may not call this model.",
    404: "The model or version is not served here (checked before the body is read).",
    408: "The request body did not arrive within the request timeout.",
    413: "The body is larger than the byte limit, or holds more instances than the "
         "instance limit.",
    422: "A well-formed request whose values the model cannot take: out of range, wrong "
         "shape or datatype, unknown or missing field, invalid parameters.",
    429: "The API key is over its request rate; retry after `Retry-After` seconds.",
    500: "Internal error; the message names the request id.",
    503: "The model is not ready or is overloaded; retry after `Retry-After` seconds.",
    504: "The model did not answer within the request timeout.",
}


def responses(*statuses: int, overrides: dict[int, type[BaseModel]] | None = None
              ) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for ``statuses``: each with its reason and ``ErrorBody``, or
    the model ``overrides`` names (a readiness answer's 503)."""
    models = overrides or {}
    return {s: {"model": models.get(s, ErrorBody), "description": ERRORS[s]}
            for s in sorted(statuses)}


class HealthReady(BaseModel):
    """``GET /v2/health/ready``: whether every model is ready (503 when one is not)."""

    ready: bool
    models: dict[str, bool]


class ModelReady(BaseModel):
    """``GET /v2/models/{model}/ready``: whether the model is ready (503 when it is not)."""

    name: str
    version: str
    ready: bool


#: any route: a bad x-request-id (400), a bad key (401), a declared length over the limit
#: (413), an internal error (500)
ANY_ROUTE = (400, 401, 413, 500)
#: a route naming a model: refused keys (403, 429), an unknown model or version (404)
MODEL_ROUTE = (*ANY_ROUTE, 403, 404, 429)
#: a prediction: a slow body (408), invalid values (422), busy (503), too slow (504)
PREDICT_ROUTE = (*MODEL_ROUTE, 408, 422, 503, 504)

GENERAL = responses(*ANY_ROUTE)
HEALTH_READY = responses(*ANY_ROUTE, 503, overrides={503: HealthReady})
MODEL = responses(*MODEL_ROUTE)
MODEL_READY = responses(*MODEL_ROUTE, 503, overrides={503: ModelReady})
PREDICT = responses(*PREDICT_ROUTE)


def only_documented(app: FastAPI) -> None:
    """Keep ``app``'s OpenAPI document to the statuses the routes name: FastAPI adds a 422
    ("Validation Error", its own body) to every route with parameters, but a route whose
    ``responses`` name no 422 has only parameters that cannot fail to parse."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if operation["responses"].get("422", {}).get("description") == (
                            "Validation Error"):
                        del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
