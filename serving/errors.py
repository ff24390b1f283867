"""One root error type that carries its HTTP status; subclasses choose it.

Every error leaves the gateway as ``{"error": "<message>"}`` with ``status_code``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """The JSON body of every error the gateway sends."""

    error: str = Field(description="What went wrong, in words.")


class FinServeError(Exception):
    """Base error; maps to HTTP 500 unless a subclass says otherwise."""

    status_code: int = 500
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(FinServeError):
    """The body is not JSON or not of the protocol's form (HTTP 400)."""

    status_code = 400


class InvalidInput(FinServeError):
    """Well-formed request whose values the model cannot take (HTTP 422)."""

    status_code = 422


class ModelNotFound(FinServeError):
    """Unknown model name (HTTP 404)."""

    status_code = 404

    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' is not served here")


class VersionNotFound(FinServeError):
    """Unknown version of a known model (HTTP 404)."""

    status_code = 404

    def __init__(self, model: str, version: str, available: list[str] | None = None) -> None:
        hint = f"; served versions: {', '.join(available)}" if available else ""
        super().__init__(f"model '{model}' has no version '{version}'{hint}")


class PayloadTooLarge(FinServeError):
    """Body or batch over the configured limit (HTTP 413)."""

    status_code = 413


class ModelNotReady(FinServeError):
    """The model is still loading or has failed to load (HTTP 503)."""

    status_code = 503
    headers = {"Retry-After": "1"}


class ModelUnavailable(FinServeError):
    """No replica could answer (overload or lost replicas) (HTTP 503 with Retry-After)."""

    status_code = 503
    headers = {"Retry-After": "1"}


class RequestTimeout(FinServeError):
    """The pipeline did not answer within the request timeout (HTTP 504)."""

    status_code = 504


class VersionExists(FinServeError):
    """A model version is immutable once written (HTTP 409 if it ever reaches HTTP)."""

    status_code = 409
