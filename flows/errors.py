"""What a keyed step raises, and which of those Prefect retries at once on the next key.

    KeyrelayError
    ├── Rotate            the key just used cannot serve now: retry the task at once (next key)
    │   ├── RateLimited   the provider said rate limited / usage limit / quota with a reset
    │   ├── Overloaded    the provider is out of capacity (not the key's fault): back off, retry
    │   └── KeyRevoked    the provider rejected the key (401/403): it was marked unusable
    ├── PoolExhausted     no key of the provider can be leased now (carries retry_at, reason)
    └── StepFailed        retrying cannot help (request too large, a quota only a person lifts)

All are picklable with their arguments: Prefect persists a failed task's exception."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from keystore import KeyrelayError, NoKeyAvailable

__all__ = [
    "KeyRevoked",
    "Overloaded",
    "PoolExhausted",
    "RateLimited",
    "Rotate",
    "RunFailed",
    "StepFailed",
    "retry_on_rotate",
]


class Rotate(KeyrelayError):
    def __init__(self, message: str, key_id: int) -> None:
        super().__init__(message, key_id)
        self.message = message
        self.key_id = key_id

    def __str__(self) -> str:
        return self.message


class RateLimited(Rotate):
    pass


class Overloaded(Rotate):
    pass


class KeyRevoked(Rotate):
    pass


class PoolExhausted(KeyrelayError):
    def __init__(
        self, provider: str, reason: str, retry_at: datetime | None, detail: tuple[str, ...] = ()
    ) -> None:
        super().__init__(provider, reason, retry_at, detail)
        self.provider, self.reason, self.retry_at, self.detail = provider, reason, retry_at, detail

    @classmethod
    def from_error(cls, error: NoKeyAvailable) -> PoolExhausted:
        return cls(error.provider, error.reason, error.retry_at, error.detail)

    def __str__(self) -> str:
        when = f" until {self.retry_at.isoformat(timespec='seconds')}" if self.retry_at else ""
        return f"every {self.provider} key is spent ({self.reason}){when}"


class StepFailed(KeyrelayError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RunFailed(KeyrelayError):
    """The run cannot finish: its message names the keys and when each would reset."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def retry_on_rotate(task: Any, task_run: Any, state: Any) -> bool:
    """retry_condition_fn: retry only when another key may succeed.

    Never call plain `state.result()` here: in an async task it returns a coroutine, the check
    silently fails and the retry never happens (verified on Prefect 3.9)."""
    error = state.result(raise_on_failure=False, _sync=True)
    return isinstance(error, Rotate)
