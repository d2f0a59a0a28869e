"""Every error the HTTP API returns, mapped to a status code in this one module.

    KeyNotFound                    404
    DuplicateKey, LastEnabledKey   409
    InvalidInput (+ ConfigError)   422   (the keystore's message: it names the field, never a value)
    KeystoreUnreachable            503   `Retry-After`; the database server stayed unreachable for
                                          the keystore's whole retry budget (a restart, a failover)
    RequestValidationError         422   (pydantic's errors without `input`/`ctx`: a body may carry
                                          a secret, even under a misspelt field name)
    405 (a method the path lacks)  405   `Allow` lists every method of the path (Starlette lists
                                          only the first route's)
    BodyTooLarge                   413   the body is over KEYRELAY_API_MAX_BODY_BYTES (raised while
                                          it streams, or answered by `BodySizeLimit` in api/app.py
                                          before any of it is read)
    any other KeyrelayError        500   generic text
    anything else                  500   generic text; logged with its traceback frames only

Answered by middleware before routing, with `problem()`: 413 for a declared body over the limit
(`BodySizeLimit`, api/app.py); 401 (`WWW-Authenticate: Bearer`) for a missing or wrong token and
429 (`Retry-After`) over a per-client budget (`AccessGate`, api/auth.py).

Bodies are always `{"detail": ...}`."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keystore.errors import (
    DuplicateKey,
    InvalidInput,
    KeyNotFound,
    KeyrelayError,
    KeystoreUnreachable,
    LastEnabledKey,
)

__all__ = [
    "BodyTooLarge",
    "FieldProblem",
    "Problem",
    "ValidationProblem",
    "error_responses",
    "install_error_handlers",
    "problem",
]

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal error; see the server log"

# Most specific first: the first matching class decides.
STATUS_BY_ERROR: tuple[tuple[type[KeyrelayError], int], ...] = (
    (KeyNotFound, 404),
    (DuplicateKey, 409),
    (LastEnabledKey, 409),
    (InvalidInput, 422),
    (KeystoreUnreachable, 503),
)
# A client told 503 comes back after this: the keystore has already retried for ~12 s, and a
# server that is still down is usually a restart or failover taking a few seconds more.
UNREACHABLE_RETRY_AFTER_S = 5


class Problem(BaseModel):
    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """A list of field problems from request validation, or one message from the keystore."""

    detail: str | list[FieldProblem]


_DESCRIPTIONS = {
    400: "The body could not be read (not UTF-8 JSON)",
    401: "Missing or wrong bearer token",
    404: "No key with this id",
    409: "Conflicts with the pool's state",
    413: "The request body is over the limit (KEYRELAY_API_MAX_BODY_BYTES)",
    422: "Invalid input",
    429: "Too many requests from this client",
    500: "Internal error",
    503: "The keystore database cannot be reached now; retry after `Retry-After` seconds",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until the client may retry (an integer >= 1)",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


def error_responses(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for error codes; `descriptions` override by code (`c409=`)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {
            "model": ValidationProblem if code == 422 else Problem,
            "description": descriptions.get(f"c{code}", _DESCRIPTIONS[code]),
        }
        if code in _HEADERS:
            entry["headers"] = _HEADERS[code]
        out[code] = entry
    return out


class BodyTooLarge(StarletteHTTPException):
    """The request body passed the limit while it was being read.

    An HTTPException so FastAPI re-raises it from the body read (any other exception there becomes
    a 400) and the default handler answers it; `Connection: close` tells the server to stop
    reading the rest rather than drain it."""

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(
            status_code=413,
            detail=f"request body over the limit of {max_body_bytes} bytes",
            headers={"Connection": "close"},
        )


def problem(
    status_code: int, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error response for middleware, which answers outside the exception handlers."""
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def status_for(exc: KeyrelayError) -> int:
    return next((code for cls, code in STATUS_BY_ERROR if isinstance(exc, cls)), 500)


async def _keyrelay_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KeyrelayError)
    code = status_for(exc)
    if code == 500:
        _log_unhandled(request.scope, exc)
        return JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)
    headers = {"Retry-After": str(UNREACHABLE_RETRY_AFTER_S)} if code == 503 else None
    return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error["type"]}
        for error in exc.errors()
    ]
    return JSONResponse({"detail": problems}, status_code=422)


async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    methods = request.app.state.allowed_methods(request.url.path)
    headers = {"Allow": ", ".join(sorted(methods))} if methods else exc.headers
    return JSONResponse({"detail": exc.detail}, status_code=405, headers=headers)


def _log_unhandled(scope: Scope, exc: BaseException) -> None:
    # The exception's text may hold request data (SQL parameters, a validation error's input):
    # log its class and frames, not its message.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("%s on %s %s\n%s", type(exc).__name__, scope.get("method"), scope.get("path"), frames)


class CatchUnhandled:
    """Turn an exception that escaped every handler into a generic 500 JSON response.

    Starlette's own `Exception` handler re-raises after responding, so the server would log the
    exception text; this middleware stops it here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            _log_unhandled(scope, exc)
            if started:
                raise
            response = JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(KeyrelayError, _keyrelay_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(405, _method_not_allowed)
    app.add_middleware(CatchUnhandled)
