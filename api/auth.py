"""Bearer-token authentication and the per-client budgets, enforced by `AccessGate` before a
request is routed or any of its body is read.

The tokens come from KEYRELAY_API_TOKEN (comma-separated, so a token can be rotated by running
old and new side by side)."""

from __future__ import annotations

import hmac
from collections.abc import Collection, Sequence

from fastapi import HTTPException, status
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import problem
from api.ratelimit import ClientRateLimit, client_address
from keystore.errors import ConfigError

__all__ = ["AccessGate", "BearerTokens", "bearer_scheme", "bearer_token", "unauthorized"]

UNAUTHORIZED_DETAIL = "missing or invalid bearer token"
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}

# auto_error=False: the scheme only documents the header in OpenAPI and parses it; the 401 (with
# WWW-Authenticate) comes from `unauthorized()` so missing and wrong tokens look the same.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token from KEYRELAY_API_TOKEN",
)


class BearerTokens:
    """The accepted tokens. Never shown: its repr counts them only."""

    def __init__(self, tokens: Sequence[str]) -> None:
        cleaned = [t.strip() for t in tokens if t.strip()]
        if not cleaned:
            raise ConfigError(
                "KEYRELAY_API_TOKEN is not set: the API refuses to start without a bearer token "
                "(set one or more comma-separated tokens)"
            )
        self._tokens = [t.encode() for t in cleaned]

    def __repr__(self) -> str:
        return f"BearerTokens(<{len(self._tokens)} tokens>)"

    def accepts(self, presented: str | None) -> bool:
        """Constant-time comparison against every token (no early exit on a match)."""
        if not presented:
            return False
        candidate = presented.encode()
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched


def bearer_token(scope: Scope) -> str | None:
    """The credentials of an `Authorization: Bearer ...` header, parsed as `bearer_scheme` does."""
    authorization = Headers(scope=scope).get("authorization")
    scheme, credentials = get_authorization_scheme_param(authorization)
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


def unauthorized() -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=UNAUTHORIZED_DETAIL,
        headers=UNAUTHORIZED_HEADERS,
    )


class AccessGate:
    """Authenticate, then charge the client's budget, before routing and before the body is read
    (FastAPI reads a body before it runs a route's dependencies). Pure ASGI middleware.

        path                                    token        budget, per client      refused
        /healthz                                not needed   none                    -
        /openapi.json, /docs (+ OAuth redirect) not needed   `documentation`         429
        any other, valid token                  required     `requests`              429
        any other, missing or wrong token       required     `failures`              401, then 429

    Authentication comes first, so a valid token is charged only to `requests` and attempts with
    a wrong token only to `failures`: a flood of bad guesses from an address is refused (429)
    while a valid token from the same address keeps working, and guessing stays as slow as the
    `failures` rate. The documentation has its own budget for the same reason: anonymous readers
    cannot spend a token holder's. Paths no route serves need the token too (a stranger learns
    nothing from 404 or 405 answers).

    /healthz is never limited: load balancers poll it, often from an address other callers share,
    and a refused health check takes a healthy instance out of rotation. It touches no database,
    so answering it costs no more than refusing it would.

    `client_address` (api/ratelimit.py) says what a client is."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: BearerTokens,
        requests: ClientRateLimit,
        failures: ClientRateLimit,
        documentation: ClientRateLimit,
        public_paths: Collection[str],
        unlimited_paths: Collection[str],
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.requests = requests
        self.failures = failures
        self.documentation = documentation
        self.public_paths = frozenset(public_paths)
        self.unlimited_paths = frozenset(unlimited_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.unlimited_paths:
            await self.app(scope, receive, send)
            return
        client = client_address(scope)
        if scope["path"] in self.public_paths:
            retry_after_s = self.documentation.hit(client)
            detail = "rate limit exceeded"
        elif self.tokens.accepts(bearer_token(scope)):
            retry_after_s = self.requests.hit(client)
            detail = "rate limit exceeded"
        else:
            retry_after_s = self.failures.hit(client)
            if retry_after_s is None:
                await problem(401, UNAUTHORIZED_DETAIL, UNAUTHORIZED_HEADERS)(scope, receive, send)
                return
            detail = "too many failed authentication attempts"
        if retry_after_s is None:
            await self.app(scope, receive, send)
            return
        refused = problem(
            429,
            f"{detail}; retry in {retry_after_s} s",
            {"Retry-After": str(retry_after_s)},
        )
        await refused(scope, receive, send)
