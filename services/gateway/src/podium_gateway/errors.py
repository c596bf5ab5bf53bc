"""JSON errors, always ``{"error": {"code", "message", ...}}`` (docs/architecture.md,
"HTTP API")."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from podium.lifecycle import TransitionError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message", ...}}``."""

    error: ErrorInfo


_DESCRIPTIONS = {
    400: "Bad request.",
    401: "Missing, malformed or unknown API key.",
    403: "Not allowed with this key.",
    404: "No such resource for this tenant.",
    409: "Conflicts with the resource's current state.",
    413: "Request body too large.",
    422: "Invalid request.",
    429: "Too many requests; retry after Retry-After.",
    503: "A dependency (store, broker) is unavailable; retry after Retry-After.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for these error statuses, with the error body schema."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        if status in (429, 503):
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        out[status] = entry
    return out


# What any authenticated /v1 route may answer besides its success.
API_ERRORS = error_responses(400, 401, 404, 413, 422, 503)


def not_found(kind: str, ident: str) -> ApiError:
    # The same answer whether the resource does not exist or belongs to another tenant.
    return ApiError(404, "not_found", f"{kind} {ident!r} was not found")


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}

# Seconds a client told 503 should wait before retrying.
RETRY_AFTER_S = 2


def outage(exc: BaseException) -> tuple[str, str] | None:
    """(code, message) if ``exc`` means a dependency is unreachable, else None."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return "store_unavailable", "the store is unreachable; retry later"
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return "events_unavailable", "the event stream store is unreachable; retry later"
    if isinstance(exc, BrokerError):
        return "broker_unavailable", "the message broker is unreachable; retry later"
    return None


def unavailable_response(code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), 503, headers={"Retry-After": str(RETRY_AFTER_S)})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, **exc.extra), exc.status, headers=exc.headers
        )

    @app.exception_handler(TransitionError)
    async def _transition(_request: Request, exc: TransitionError) -> JSONResponse:
        # The state moved on (or the resource is not the tenant's): a defined answer.
        retry = exc.details.get("retry_after_s")
        headers = {"Retry-After": str(retry)} if retry else None
        return JSONResponse(
            error_body(exc.code, exc.message, **exc.details), exc.status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {
                "loc": [str(p) for p in err.get("loc", ())],
                "message": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(d['loc'])}: {d['message']}" for d in details[:5])
        return JSONResponse(
            error_body("validation_error", f"invalid request: {summary}", details=details), 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and type(exc.__cause__).__name__ == "TooLarge":
            # A chunked body (no Content-Length) crossed the size limit while FastAPI read
            # it: the body-limit middleware's refusal, which FastAPI reports as an
            # unparsable body. It is a 413.
            limit = request.app.state.runtime.settings.max_request_bytes
            return JSONResponse(
                error_body("payload_too_large", f"request body exceeds {limit} bytes"),
                413,
                headers={"connection": "close"},
            )
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(
            error_body(code, message), exc.status_code, headers=getattr(exc, "headers", None)
        )

    async def _dependency_error(_request: Request, exc: Exception) -> JSONResponse:
        down = outage(exc)
        if down is None:
            log.exception("unhandled error", exc_info=exc)
            return JSONResponse(error_body("internal_error", "internal server error"), 500)
        # Nothing was accepted (the transaction did not commit); the client retries.
        log.warning("%s: %s", down[0], (str(exc).splitlines() or [""])[0][:300])
        return unavailable_response(*down)

    # A dependency that is down answers 503 with Retry-After, never a 500 or a hang.
    for error in (
        DBAPIError,
        PoolTimeout,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        BrokerError,
    ):
        app.add_exception_handler(error, _dependency_error)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        down = outage(exc)
        if down is not None:
            return unavailable_response(*down)
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal server error"), 500)
