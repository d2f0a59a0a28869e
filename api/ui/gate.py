"""`PageGate`: the access rules of the pool page, which lives under /ui.

The page is a separate ASGI app (api/ui/app.py) with a gate of its own, placed in front of the
API's `AccessGate`: requests under /ui go to the page and never reach the API's routes, and
requests elsewhere pass through untouched. So the API keeps one credential (the bearer header)
and one budget, and the page has its own:

    path under /ui                            credential        budget, per client   refused
    /ui, /ui/, /ui/static/*                   none              none                 -
    login, logout                             none              `page`               429
    anything else, valid session cookie       cookie            `page`               429
    anything else, no cookie                  -                 `page`               401
    anything else, a wrong or expired cookie  -                 `failures` (API's)   401, then 429
    a POST/PATCH/... from another origin      -                 (as above)           403

Why a budget of its own: the page polls its state every POLL_INTERVAL_S; at the API's default
of 10/minute the second minute of an open page would be refused. PAGE_RATE_LIMIT fits one open
page per client address (30 polls a minute at 2 s) twice over, so reloads and actions never
trip it; a second tab from the same address can, and the page then waits for `Retry-After` and
says so. Charging the page to its own budget also means an open page never spends what the
operator's scripts get from the API, and wrong cookies count against the same failed-login
budget as wrong tokens (the login form checks tokens too), so the page is no faster way to
guess.

The page and its assets need no cookie (they hold no data) and spend no budget: a page load
is half a dozen of them, and like /healthz they are answered from memory for about what a
refusal costs. Budgeting them would let a few reloads lock the page out of its own data."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import problem
from api.ratelimit import ClientRateLimit, client_address
from api.ui.session import PageSessions, same_origin

__all__ = ["PAGE_PREFIX", "PAGE_RATE_LIMIT", "POLL_INTERVAL_S", "PageGate"]

PAGE_PREFIX = "/ui"
POLL_INTERVAL_S = 2.0
PAGE_RATE_LIMIT = "60/minute"
_STATIC_PATHS = frozenset({"/ui", "/ui/"})  # + /ui/static/*
_OPEN_PATHS = frozenset({"/ui/login", "/ui/logout"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_FIRST = "log in with an API token first"
SESSION_INVALID = "the session has expired or is not valid; log in again"


def under_page(path: str) -> bool:
    return path == PAGE_PREFIX or path.startswith(PAGE_PREFIX + "/")


class PageGate:
    """Pure ASGI middleware: authenticate and budget requests under /ui and hand them to `page`;
    pass every other request to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        page: ASGIApp,
        sessions: PageSessions,
        budget: ClientRateLimit,
        failures: ClientRateLimit,
    ) -> None:
        self.app = app
        self.page = page
        self.sessions = sessions
        self.budget = budget
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not under_page(scope["path"]):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] == "GET" and (
            path in _STATIC_PATHS or path.startswith(PAGE_PREFIX + "/static/")
        ):
            await self.page(scope, receive, send)
            return
        open_path = path in _OPEN_PATHS
        cookie = None if open_path else self.sessions.from_scope(scope)
        valid = open_path or self.sessions.accepts(cookie)
        if valid or cookie is None:
            retry_after_s = self.budget.hit(client_address(scope))
            detail = "too many requests from this address to the pool page"
        else:
            retry_after_s = self.failures.hit(client_address(scope))
            detail = "too many failed authentication attempts"
        if retry_after_s is not None:
            headers = {"Retry-After": str(retry_after_s)}
            await problem(429, f"{detail}; retry in {retry_after_s} s", headers)(
                scope, receive, send
            )
            return
        if scope["method"] not in _SAFE_METHODS and not same_origin(scope):
            await problem(403, "refused: the request does not come from the pool page's origin")(
                scope, receive, send
            )
            return
        if not valid:
            await problem(401, LOGIN_FIRST if cookie is None else SESSION_INVALID)(
                scope, receive, send
            )
            return
        await self.page(scope, receive, send)
