"""What a call through `keyrelay_client` raises instead of the SDK's own errors.

    KeyrelayError
    ├── NoKeyAvailable (keystore)  no key can be leased now: `retry_at`, `reason` (raised as is)
    ├── LeaseLost (keystore)       the block was cancelled: its lease could not be kept
    └── ProviderError (keystore)
        └── CallFailed             a call on a leased key got no usable answer; carries
            │                      provider, key_id, kind, status, request_id and the signal
            ├── KeyRefused         this key cannot serve now; the keystore has already cooled
            │                      it (rate_limit, usage_limit, quota_exhausted) or benched it
            │                      (key_rejected: 401/403), so the next lease takes another key
            ├── ProviderBusy       nobody's key: overloaded, server_error (5xx), unreachable,
            │                      timeout; back off, then any key may serve
            └── RequestRefused     the request itself: request_too_large, bad_request (another
                                   4xx); no key will help

Messages name the key by id and quote the provider's error text through a `Redactor`; they
never hold a secret. None of these is chained to the SDK exception it replaces: that exception
holds the request, whose headers hold the key.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from keystore import ProviderError, RateLimitSignal

__all__ = [
    "CallFailed",
    "FailureKind",
    "KeyRefused",
    "ProviderBusy",
    "RequestRefused",
    "call_failed",
]

KeyRefusal = Literal["rate_limit", "usage_limit", "quota_exhausted", "key_rejected"]
Busy = Literal["overloaded", "server_error", "unreachable", "timeout"]
RequestFault = Literal["request_too_large", "bad_request"]
FailureKind = KeyRefusal | Busy | RequestFault


class CallFailed(ProviderError):
    """A call on leased key `key_id` got no usable answer; `kind` says why, `signal` is the
    keystore's reading of a limit response (None for other failures)."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        key_id: int,
        kind: FailureKind,
        status: int | None = None,
        request_id: str | None = None,
        signal: RateLimitSignal | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.key_id = key_id
        self.kind: FailureKind = kind
        self.status = status
        self.request_id = request_id
        self.signal = signal

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Picklable with its keywords: Prefect persists a failed task's exception.
        fields = {
            "provider": self.provider,
            "key_id": self.key_id,
            "kind": self.kind,
            "status": self.status,
            "request_id": self.request_id,
            "signal": self.signal,
        }
        return (_rebuild, (type(self), self.message, fields))


def _rebuild(cls: type[CallFailed], message: str, fields: dict[str, Any]) -> CallFailed:
    return cls(message, **fields)


class KeyRefused(CallFailed):
    """The provider refused this key (a limit, a spent quota, or the key itself); the keystore
    has marked it, so another key may serve at once."""


class ProviderBusy(CallFailed):
    """The provider could not answer (overloaded, 5xx, unreachable, timed out): not the key's
    fault; worth trying again after a backoff."""


class RequestRefused(CallFailed):
    """The provider refused the request itself (too large, malformed): no key will help."""


_CLASSES: dict[str, type[CallFailed]] = {
    **dict.fromkeys(get_args(KeyRefusal), KeyRefused),
    **dict.fromkeys(get_args(Busy), ProviderBusy),
    **dict.fromkeys(get_args(RequestFault), RequestRefused),
}


def call_failed(
    kind: FailureKind,
    message: str,
    *,
    provider: str,
    key_id: int,
    status: int | None = None,
    request_id: str | None = None,
    signal: RateLimitSignal | None = None,
) -> CallFailed:
    """The error of the class that `kind` belongs to."""
    return _CLASSES[kind](
        message,
        provider=provider,
        key_id=key_id,
        kind=kind,
        status=status,
        request_id=request_id,
        signal=signal,
    )
