"""The API's routes, composed in one router.

Every router below keys_router serves paths under /keys. `/keys/{id}` matches integers only
(`{id:int}`), so it never captures /keys/status, /keys/explain, /keys/leases or /keys/config
(another method on those is a 405, `/keys/abc` a 404); the static paths are still included
first."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.routing import APIRoute

from api.deps import require_token
from api.errors import error_responses
from api.routes import audit, config, health, keys, leases, pool

__all__ = ["allowed_methods", "api_router"]

# Authentication and the per-client limits run before routing (api/auth.py, AccessGate); the
# token dependency documents the scheme and guards the routes should the gate be missing.
keys_router = APIRouter(
    tags=["keys"],
    dependencies=[Depends(require_token)],
    responses=error_responses(401, 429, 500, 503),
)
keys_router.include_router(pool.router)
keys_router.include_router(leases.router)
keys_router.include_router(config.router)
keys_router.include_router(keys.router)  # /keys/{id} last

# Any request can be refused for its body size (api/app.py, BodySizeLimit), a GET included.
api_router = APIRouter(responses=error_responses(413))
api_router.include_router(health.router)
api_router.include_router(keys_router)
api_router.include_router(
    audit.router,
    dependencies=[Depends(require_token)],
    responses=error_responses(401, 429, 500, 503),
)


def allowed_methods(path: str) -> set[str]:
    """Every method some route serves at `path` (for the `Allow` header of a 405)."""
    return {
        method
        for router in (
            health.router,
            pool.router,
            leases.router,
            config.router,
            keys.router,
            audit.router,
        )
        for route in router.routes
        if isinstance(route, APIRoute) and route.path_regex.match(path)
        for method in route.methods or ()
    }
