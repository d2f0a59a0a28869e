"""Credentials as the emulator sees them: who is calling, and how to name them without the secret.

The emulator never stores, logs or echoes a full key: everything it keeps is keyed by the
fingerprint (SHA-256 of the secret, first 16 hex chars) and shown in the masked form (at most the
first 7 and the last 4 characters, never more than a third of it). Both are computed here: the
emulator stands for the provider, a stranger to keyrelay, so it imports nothing from `keystore/`.
The fingerprint is the common SHA-256 prefix that keyrelay shows too, so a test can match the
emulator's counters to a keystore row without either side knowing the other's code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from starlette.datastructures import Headers

__all__ = [
    "AuthScheme",
    "Credential",
    "CredentialKind",
    "fingerprint",
    "mask",
    "read_credential",
]

AuthScheme = Literal["x-api-key", "bearer"]  # the header the key came in
# What the key is. For Anthropic this decides the rate-limit header family: API keys get
# `anthropic-ratelimit-*`, subscription (OAuth) tokens `anthropic-ratelimit-unified-*`.
CredentialKind = Literal["api_key", "oauth"]
_FINGERPRINT_HEX = 16
_MASK_HEAD, _MASK_TAIL = 7, 4


def fingerprint(secret: str) -> str:
    """First 16 hex characters of the secret's SHA-256: stable, safe to show, unique per key."""
    return hashlib.sha256(secret.encode()).hexdigest()[:_FINGERPRINT_HEX]


def mask(secret: str) -> str:
    """At most the first 7 and the last 4 characters, never more than a third of the secret."""
    budget = len(secret) // 3
    tail = min(_MASK_TAIL, budget)
    head = min(_MASK_HEAD, budget - tail)
    return f"{secret[:head]}...{secret[len(secret) - tail :] if tail else ''}"


@dataclass(frozen=True)
class Credential:
    """The caller's key; `secret` lives only for the request (prefix rules need it)."""

    secret: str = field(repr=False)
    scheme: AuthScheme
    kind: CredentialKind = "api_key"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.secret)

    @property
    def masked(self) -> str:
        return mask(self.secret)

    def __str__(self) -> str:
        return f"{self.kind}:{self.masked}"


def read_credential(
    headers: Headers,
    *,
    provider: Literal["anthropic", "openai"],
    oauth_token_prefixes: Sequence[str] = (),
) -> Credential | None:
    """The key a request carries, or None when it carries none.

    Anthropic: `x-api-key` wins over `Authorization: Bearer`. A bearer token is not always a
    subscription token: the claude CLI sends `x-api-key` for ANTHROPIC_API_KEY and a bearer token
    plus the `oauth-2025-04-20` beta for CLAUDE_CODE_OAUTH_TOKEN, but the Python SDK (2.x) sends
    plain API keys as bearer tokens too. So a bearer token is OAuth when the request carries an
    `oauth-` beta or the token has an OAuth prefix (`sk-ant-oat...`). OpenAI: bearer API keys.
    """
    if provider == "anthropic":
        api_key = headers.get("x-api-key", "").strip()
        if api_key:
            return Credential(secret=api_key, scheme="x-api-key")
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    oauth = provider == "anthropic" and (
        "oauth-" in headers.get("anthropic-beta", "")
        or any(token.startswith(prefix) for prefix in oauth_token_prefixes)
    )
    return Credential(secret=token, scheme="bearer", kind="oauth" if oauth else "api_key")
