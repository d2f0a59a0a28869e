"""What an executor raises when a turn fails for a reason that is not a rate limit.

Limits (429, overloaded, spend caps, request too large) are never raised: they come back as a
`RateLimitSignal`. Everything else is one of these, so the flow maps each class once:

    ProviderError (keystore.errors)
    └── ExecutorError            carries agent, key_id, status, request_id
        ├── KeyRejected          401/403: the key is invalid, revoked or not allowed: mark it
        │                        unusable and rotate
        ├── ProviderUnavailable  5xx (not overload), connection failure: transient, any key
        │   └── ProviderTimeout  no answer within the executor's `timeout_s`
        ├── RequestRejected      another 4xx: the request itself is wrong; no key will help
        └── AgentFailed          the `claude` CLI ended without a usable result (crash, exit
            │                    code, no `result` event, no transcript)
            └── SessionNotFound  `--resume` found no session: the checkpoint did not restore

Messages never hold a secret: executors build them from redacted text (see `redact.py`) and
raise them outside the `except` block that caught the SDK's exception, whose request object
carries the key in its headers, so that exception is not reachable as `__cause__` or
`__context__` either.
"""

from __future__ import annotations

from typing import Any

from keystore.errors import ProviderError

__all__ = [
    "AgentFailed",
    "ExecutorError",
    "KeyRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RequestRejected",
    "SessionNotFound",
]


class ExecutorError(ProviderError):
    """A turn failed; the attributes say where (never with what secret)."""

    def __init__(
        self,
        message: str,
        *,
        agent: str,
        key_id: int | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.agent = agent
        self.key_id = key_id
        self.status = status
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Picklable with its keywords (Prefect persists a failed task's exception).
        fields = {
            "agent": self.agent,
            "key_id": self.key_id,
            "status": self.status,
            "request_id": self.request_id,
        }
        return (_rebuild, (type(self), self.message, fields))


def _rebuild(cls: type[ExecutorError], message: str, fields: dict[str, Any]) -> ExecutorError:
    return cls(message, **fields)


class KeyRejected(ExecutorError):
    """The provider refused the key itself (401/403)."""


class ProviderUnavailable(ExecutorError):
    """A server error or an unreachable provider: worth trying again, on any key."""


class ProviderTimeout(ProviderUnavailable):
    """No complete answer within the executor's timeout."""


class RequestRejected(ExecutorError):
    """The provider refused the request (a 4xx that is neither a limit nor the key)."""


class AgentFailed(ExecutorError):
    """The agent process ended without a usable result."""


class SessionNotFound(AgentFailed):
    """The CLI could not find the session the checkpoint names."""
