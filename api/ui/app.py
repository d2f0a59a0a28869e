"""The pool page's routes, as an app of their own behind `PageGate` (api/ui/gate.py).

    GET   /ui                     -> /ui/
    GET   /ui/                    the page (static HTML; it holds no data)
    GET   /ui/static/{asset}      its scripts (ES modules) and style sheet, from the package
    POST  /ui/login               {"token": ...} -> 204 + session cookie; 401 wrong token
    POST  /ui/logout              204, cookie cleared
    GET   /ui/state               PageState (api/ui/state.py), polled by the page
    POST  /ui/keys/{id}/reset     the API's POST /keys/{id}/reset
    PATCH /ui/keys/{id}           {"enabled": bool}: the API's PATCH /keys/{id}, that field only

The actions call the API's own route functions (api/routes/keys.py), so the rules and the
answers are the API's: 404 for a missing key, 409 with the keystore's message when disabling a
provider's last enabled key. The page may only reset, disable and enable: adding, deleting and
changing secrets stay with the API and the CLI.

Not in the OpenAPI document: these routes are the page's, authenticated by its cookie; the
same data is in the API (GET /keys, /keys/status, /keys/leases, /audit)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Body, Depends, FastAPI, Request, Response, status
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from starlette.responses import RedirectResponse

from api.auth import BearerTokens
from api.deps import KeyId, KeystoreDep
from api.errors import Problem, install_error_handlers, problem
from api.ratelimit import ClientRateLimit, client_address
from api.routes import keys as key_routes
from api.schemas import KeyUpdateRequest
from api.ui.session import COOKIE_NAME, COOKIE_PATH, PageSessions
from api.ui.state import PageState, page_state
from keystore import KeyPublic, Keystore

__all__ = ["PageConfig", "create_page_app"]

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """The page's files by name, read once: a handful of small files shipped in the package
    (package-data in pyproject.toml). Nothing else is ever served from the directory."""
    assets = {}
    for entry in resources.files("api.ui").joinpath("static").iterdir():
        content_type = _CONTENT_TYPES.get("." + entry.name.rpartition(".")[2])
        if content_type is not None:
            assets[entry.name] = (entry.read_bytes(), content_type)
    return assets


_ASSETS = _load_assets()

# Everything the page loads comes from this server; nothing from a CDN (it must work offline),
# and no inline script, so an injected one does not run.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True)
class PageConfig:
    keystore: Keystore
    tokens: BearerTokens
    sessions: PageSessions
    failures: ClientRateLimit  # the API's failed-authentication budget, shared
    prefect_ui_url: str | None
    poll_interval_s: float


def _config(request: Request) -> PageConfig:
    config: PageConfig = request.app.state.page
    return config


ConfigDep = Annotated[PageConfig, Depends(_config)]


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    token: SecretStr = Field(min_length=1, max_length=4096)


class EnabledRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    enabled: bool


router = APIRouter(prefix="/ui")


@router.get("")
def page_root() -> RedirectResponse:
    return RedirectResponse("ui/", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@router.get("/")
def page() -> Response:
    return _asset("index.html")


@router.get("/static/{name}")
def asset(name: str) -> Response:
    return _asset(name)


def _asset(name: str) -> Response:
    found = _ASSETS.get(name)
    if found is None:
        return problem(404, "not found")
    body, content_type = found
    return Response(body, media_type=content_type, headers=_PAGE_HEADERS)


@router.post("/login", status_code=204, responses={401: {"model": Problem}, 429: {}})
def login(request: Request, config: ConfigDep, body: Annotated[LoginRequest, Body()]) -> Response:
    token = body.token.get_secret_value()
    if not config.tokens.accepts(token):
        retry_after_s = config.failures.hit(client_address(request.scope))
        if retry_after_s is not None:
            detail = f"too many failed authentication attempts; retry in {retry_after_s} s"
            return problem(429, detail, {"Retry-After": str(retry_after_s)})
        return problem(401, "that is not one of the API's tokens (KEYRELAY_API_TOKEN)")
    response = Response(status_code=204, headers=_NO_STORE)
    response.set_cookie(
        COOKIE_NAME,
        config.sessions.issue(token),
        max_age=config.sessions.lifetime_s,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout", status_code=204)
def logout(request: Request) -> Response:
    response = Response(status_code=204, headers=_NO_STORE)
    response.delete_cookie(
        COOKIE_NAME,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.get("/state", response_model=PageState)
def state(config: ConfigDep, response: Response) -> PageState:
    response.headers.update(_NO_STORE)
    return page_state(
        config.keystore,
        prefect_ui_url=config.prefect_ui_url,
        poll_interval_s=config.poll_interval_s,
    )


@router.post("/keys/{id:int}/reset", response_model=KeyPublic)
def reset_key(ks: KeystoreDep, key_id: KeyId) -> KeyPublic:
    return key_routes.reset_key(ks, key_id)


@router.patch("/keys/{id:int}", response_model=KeyPublic)
def set_enabled(ks: KeystoreDep, key_id: KeyId, body: EnabledRequest) -> KeyPublic:
    return key_routes.update_key(ks, key_id, KeyUpdateRequest(enabled=body.enabled))


def allowed_methods(path: str) -> set[str]:
    return {
        method
        for route in router.routes
        if isinstance(route, APIRoute) and route.path_regex.match(path)
        for method in route.methods or ()
    }


def create_page_app(config: PageConfig) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.page = config
    app.state.keystore = config.keystore  # for api.deps.KeystoreDep
    app.state.allowed_methods = allowed_methods
    install_error_handlers(app)
    app.include_router(router)
    return app
