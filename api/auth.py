"""Bearer-token authentication: the tokens come from KEYRELAY_API_TOKEN (comma-separated, so a
token can be rotated by running old and new side by side)."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastapi import HTTPException, status
from fastapi.security import HTTPBearer

from keystore.errors import ConfigError

__all__ = ["BearerTokens", "bearer_scheme", "unauthorized"]

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


def unauthorized() -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing or invalid bearer token",
        headers={"WWW-Authenticate": "Bearer"},
    )
