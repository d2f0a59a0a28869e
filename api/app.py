"""The keyrelay HTTP API.

    app = create_app()            # settings from KEYRELAY_*; opens (and upgrades) the keystore
    uvicorn.run(app)              # or: keyrelay api --port 8000

Refuses to start without KEYRELAY_API_TOKEN. Every API route but GET /healthz needs the token;
the documentation (/openapi.json, Swagger UI at /docs) is public: it describes the API and holds
no data, and a stranger should be able to read it (and point schema tools at it) first."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from limits.storage import Storage

from api.auth import BearerTokens
from api.errors import install_error_handlers
from api.ratelimit import ClientRateLimit
from api.routes import allowed_methods, api_router
from keystore import Keystore, Settings, open_keystore

__all__ = ["create_app"]

DESCRIPTION = """Manage keyrelay's provider keys, rotation settings and audit log.

Every route but `GET /healthz` needs `Authorization: Bearer <token>` (KEYRELAY_API_TOKEN).
Routes under `/keys` are rate limited per client (KEYRELAY_API_RATE_LIMIT); over the limit they
answer 429 with `Retry-After`. Secrets are write-only. Times are ISO 8601 UTC. Errors are
`{"detail": ...}`."""


def create_app(
    settings: Settings | None = None,
    keystore: Keystore | None = None,
    *,
    rate_limit_storage: Storage | None = None,
    rate_limit_clock: Callable[[], float] | None = None,
) -> FastAPI:
    """Build the app. `keystore` defaults to `open_keystore(settings=settings)` (closed on
    shutdown); the rate limit gets a fresh in-memory storage unless one is given (with the clock
    it measures windows by)."""
    settings = settings or Settings()
    tokens = BearerTokens(settings.api_tokens())  # raises ConfigError when none is set
    limit_kwargs = {"clock": rate_limit_clock} if rate_limit_clock is not None else {}
    rate_limit = ClientRateLimit(
        settings.api_rate_limit, storage=rate_limit_storage, **limit_kwargs
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
    app.state.rate_limit = rate_limit
    app.state.allowed_methods = allowed_methods
    install_error_handlers(app)
    app.include_router(api_router)
    return app
