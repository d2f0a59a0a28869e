"""FastAPI dependencies and their `Annotated` aliases, in one place.

The app keeps its keystore, tokens and rate limit on `app.state` (set by `create_app`), so two
apps in one process share nothing."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials

from api.auth import BearerTokens, bearer_scheme, unauthorized
from api.ratelimit import ClientRateLimit
from keystore import Keystore
from keystore.errors import KeyNotFound

__all__ = ["ID_MAX", "KeyId", "KeystoreDep", "limit_per_client", "require_token"]

# keys.id is an INTEGER column: larger ids cannot exist (and PostgreSQL refuses to compare them).
ID_MAX = 2**31 - 1


def get_keystore(request: Request) -> Keystore:
    store: Keystore = request.app.state.keystore
    return store


KeystoreDep = Annotated[Keystore, Depends(get_keystore)]


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """401 unless the request carries one of the configured bearer tokens."""
    tokens: BearerTokens = request.app.state.tokens
    if not tokens.accepts(credentials.credentials if credentials else None):
        raise unauthorized()


async def limit_per_client(request: Request) -> None:
    """429 when this client (IP address) is over KEYRELAY_API_RATE_LIMIT.

    It runs before `require_token`, so requests with a wrong token use up the budget too (a
    token cannot be guessed faster than the limit)."""
    limit: ClientRateLimit = request.app.state.rate_limit
    client = request.client.host if request.client else "unknown"
    retry_after_s = limit.hit(client)
    if retry_after_s is not None:
        raise HTTPException(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"rate limit exceeded; retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )


def _key_id(id: Annotated[int, Path(description="the key's id")]) -> int:
    # Every integer is a valid id to ask for; one no row can have is simply not found.
    if not 1 <= id <= ID_MAX:
        raise KeyNotFound(id)
    return id


KeyId = Annotated[int, Depends(_key_id)]
