"""The keyrelay HTTP API.

    app = create_app()            # settings from KEYRELAY_*; opens (and upgrades) the keystore
    uvicorn.run(app)              # or: keyrelay api --port 8000

Refuses to start without KEYRELAY_API_TOKEN. Every API route but GET /healthz needs the token;
the documentation (/openapi.json, Swagger UI at /docs) is public: it describes the API and holds
no data, and a stranger should be able to read it (and point schema tools at it) first.

Requests pass, outermost first: CatchUnhandled (api/errors.py) -> BodySizeLimit -> PageGate
(api/ui/gate.py: requests under /ui go to the pool page, with its cookie and its budget) ->
AccessGate (api/auth.py: the token, then the per-client budgets) -> the routes. A declared body
over the limit is refused before the token is looked at; a request without a valid token (or,
under /ui, session cookie) is refused before any of its body is read.

The pool page (GET /ui/, api/ui/) is for people: a browser logs in once with a token and gets a
session cookie scoped to /ui. The API itself accepts only the Authorization header."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from limits.storage import MemoryStorage, Storage
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import AccessGate, BearerTokens
from api.errors import BodyTooLarge, install_error_handlers, problem
from api.ratelimit import ClientRateLimit
from api.routes import allowed_methods, api_router
from api.ui import (
    PAGE_RATE_LIMIT,
    POLL_INTERVAL_S,
    PageConfig,
    PageGate,
    PageSessions,
    create_page_app,
)
from api.ui.state import prefect_ui_base
from keystore import Keystore, Settings, open_keystore

__all__ = ["BodySizeLimit", "create_app"]

DESCRIPTION = """Manage keyrelay's provider keys, rotation settings and audit log.

Every route but `GET /healthz` needs `Authorization: Bearer <token>` (KEYRELAY_API_TOKEN).
Every route but `GET /healthz` is rate limited per client address (KEYRELAY_API_RATE_LIMIT; the
documentation has a budget of its own); over the limit it answers 429 with `Retry-After`.
Requests with a missing or wrong token are answered 401 and counted in a separate per-client
budget (KEYRELAY_API_AUTH_FAILURE_LIMIT): once it is spent they get 429, while a valid token from
the same address keeps working. A request body over KEYRELAY_API_MAX_BODY_BYTES (1 MiB by
default) is refused with 413. Secrets are write-only. Times are ISO 8601 UTC. Errors are
`{"detail": ...}`.

People can watch the pool live at `/ui/` (the pool page: log in with a token; it is not part of
this document)."""


def create_app(
    settings: Settings | None = None,
    keystore: Keystore | None = None,
    *,
    rate_limit_storage: Storage | None = None,
    rate_limit_clock: Callable[[], float] | None = None,
) -> FastAPI:
    """Build the app. `keystore` defaults to `open_keystore(settings=settings)` (closed on
    shutdown); the per-client budgets get a fresh in-memory storage unless one is given (with
    the clock it measures windows by)."""
    settings = settings or Settings()
    tokens = BearerTokens(settings.api_tokens())  # raises ConfigError when none is set
    storage = rate_limit_storage if rate_limit_storage is not None else MemoryStorage()
    clock = rate_limit_clock or time.time
    rate_limit = ClientRateLimit(settings.api_rate_limit, storage=storage, clock=clock)
    documentation_limit = ClientRateLimit(
        settings.api_rate_limit, name="documentation", storage=storage, clock=clock
    )
    failure_limit = ClientRateLimit(
        settings.resolved_api_auth_failure_limit,
        name="auth-failures",
        setting="KEYRELAY_API_AUTH_FAILURE_LIMIT",
        storage=storage,
        clock=clock,
    )
    # The page's own budget (api/ui/gate.py says why), on the same storage under its own name.
    page_limit = ClientRateLimit(
        PAGE_RATE_LIMIT, name="page", setting="PAGE_RATE_LIMIT", storage=storage, clock=clock
    )
    owned = keystore is None
    store = open_keystore(settings=settings) if keystore is None else keystore

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            store.close()

    app = FastAPI(
        title="keyrelay",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.keystore = store
    app.state.tokens = tokens
    app.state.rate_limit = rate_limit  # its reset() clears every budget (one storage)
    app.state.allowed_methods = allowed_methods
    public = (app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url)
    app.add_middleware(
        AccessGate,
        tokens=tokens,
        requests=rate_limit,
        failures=failure_limit,
        documentation=documentation_limit,
        public_paths={path for path in public if path},
        unlimited_paths={"/healthz"},
    )
    page = PageConfig(
        keystore=store,
        tokens=tokens,
        sessions=PageSessions(settings.api_tokens()),
        failures=failure_limit,
        # Prefect's own variable: holders that are keyrelay flow runs link to the run's page.
        prefect_ui_url=prefect_ui_base(os.environ.get("PREFECT_UI_URL")),
        poll_interval_s=POLL_INTERVAL_S,
    )
    app.add_middleware(
        PageGate,
        page=create_page_app(page),
        sessions=page.sessions,
        budget=page_limit,
        failures=failure_limit,
    )
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.api_max_body_bytes)
    install_error_handlers(app)  # adds CatchUnhandled last: the outermost middleware
    app.include_router(api_router)
    return app


class BodySizeLimit:
    """Refuse a request body over `max_body_bytes` with 413 before reading past the limit.

    Pure ASGI (not BaseHTTPMiddleware, which may buffer): a declared Content-Length over the
    limit is answered at once, without reading; a body without one (chunked) is counted as the
    route reads it, and the read that passes the limit raises `BodyTooLarge`.

    Every response sent before the declared body was read to its end (a 413, a 401 from
    AccessGate, a route that ignores the body) carries `Connection: close`: the server then
    closes the connection instead of reading the rest of a body nobody wants, which for a
    never-ending chunked upload would never finish."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = _content_length(headers)
        if declared is not None and declared > self.max_body_bytes:
            await _too_large(self.max_body_bytes)(scope, receive, send)
            return
        body_unread = bool(declared) or "transfer-encoding" in headers
        received = 0
        started = False

        async def receive_within_limit() -> Message:
            nonlocal received, body_unread
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
                body_unread = bool(message.get("more_body", False))
            return message

        async def send_closing_if_unread(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if body_unread:
                    message = _with_connection_close(message)
            await send(message)

        try:
            await self.app(scope, receive_within_limit, send_closing_if_unread)
        except BodyTooLarge:
            # Raised outside a route's body read (where FastAPI answers it itself).
            if started:
                raise
            await _too_large(self.max_body_bytes)(scope, receive, send_closing_if_unread)


def _content_length(headers: Headers) -> int | None:
    # uvicorn (h11) has already refused a malformed one with 400; None means "not declared", and
    # the body is then counted as it streams.
    value = headers.get("content-length")
    if value is None or not value.strip().isascii():
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _too_large(max_body_bytes: int) -> ASGIApp:
    exc = BodyTooLarge(max_body_bytes)
    return problem(exc.status_code, exc.detail, exc.headers)


def _with_connection_close(message: Message) -> Message:
    headers = list(message.get("headers", []))
    if any(name.lower() == b"connection" for name, _ in headers):
        return message
    return {**message, "headers": [*headers, (b"connection", b"close")]}
