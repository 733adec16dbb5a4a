"""Every error answer is JSON ``{"message": "..."}``: what was wrong and what to do.

Request validation fails with 400 (not FastAPI's 422), naming each bad parameter; an unexpected
exception is logged with its traceback and answers 500 without details.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger("kronos.api")


class ErrorBody(BaseModel):
    message: str = Field(description="what was wrong, and what to do about it")


def _described(text: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": text}


# Declared on every /v1 route (the OpenAPI schema, and schemathesis' conformance checks, rest on it).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _described("a parameter is invalid (the message names it)"),
    401: _described("no API key, or an unknown one"),
    429: _described("over the key's rate limit; retry after `Retry-After` seconds"),
    503: _described("the daemon is starting, stopping, or cannot reach Redis"),
}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status, headers=headers)


class ApiError(Exception):
    """Raised by a route: answered as ``status`` with ``{"message": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


_DEFAULT_MESSAGES = {
    404: "no such route; the API's routes are under /v1 (see /openapi.json)",
    405: "method not allowed on this route",
}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "path", "header", "body"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI, not_found: str = _DEFAULT_MESSAGES[404]) -> None:
    messages = {**_DEFAULT_MESSAGES, 404: not_found}

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error(exc.status, exc.message, exc.headers)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else None
        generic = detail in (None, "Not Found", "Method Not Allowed")
        message = messages.get(exc.status_code, detail or "error") if generic else str(detail)
        return error(exc.status_code, message, dict(exc.headers or {}))

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error(400, _validation_message(exc))

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", path=request.url.path, error=repr(exc), exc_info=exc)
        return error(500, "internal error; the daemon's log has the details")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)
