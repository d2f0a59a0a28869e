"""FastAPI dependencies and their `Annotated` aliases, in one place.

The app keeps its keystore, tokens and rate limits on `app.state` (set by `create_app`), so two
apps in one process share nothing."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials

from api.auth import BearerTokens, bearer_scheme, unauthorized
from keystore import Keystore
from keystore.errors import KeyNotFound

__all__ = ["ID_MAX", "KeyId", "KeystoreDep", "require_token"]

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
    """401 unless the request carries one of the configured bearer tokens.

    `AccessGate` (api/auth.py) has already refused such requests, before their body was read and
    with the failure budget counted; this dependency declares the scheme in the OpenAPI document
    and keeps the routes closed in an app assembled without the gate."""
    tokens: BearerTokens = request.app.state.tokens
    if not tokens.accepts(credentials.credentials if credentials else None):
        raise unauthorized()


def _key_id(id: Annotated[int, Path(description="the key's id")]) -> int:
    # Every integer is a valid id to ask for; one no row can have is simply not found.
    if not 1 <= id <= ID_MAX:
        raise KeyNotFound(id)
    return id


KeyId = Annotated[int, Depends(_key_id)]
