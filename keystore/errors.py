"""The keyrelay exception tree. Every layer catches these and maps them once.

    KeyrelayError
    ├── InvalidInput                a value that cannot be accepted (bad field, unknown provider)
    │   └── ConfigError             bad settings, unknown or invalid RotationConfig field
    ├── MasterKeyError              master key missing, malformed, or unable to decrypt
    ├── KeystoreUnavailable         the keystore database cannot be used as it is (names it)
    │   ├── KeystoreMissing         gone where one existed (never silently re-created)
    │   ├── KeystoreCorrupt         empty, not a database, or its tables are missing
    │   ├── KeystoreLocked          another process held the write lock past the busy timeout
    │   ├── KeystoreUnreachable     the database server could not be reached within the retry budget
    │   └── KeystoreReadOnly        the database cannot be written
    ├── KeystoreExists              `keyrelay db init` where a keystore already is
    ├── KeyNotFound                 no key with that id
    ├── DuplicateKey                a key with the same secret (fingerprint) exists
    ├── LastEnabledKey              refusing to delete/disable a provider's last enabled key
    ├── LeaseLost                   the lease expired or was reclaimed before renew/release
    ├── NoKeyAvailable              nothing eligible now; carries retry_at and reason
    └── ProviderError               an executor's provider call failed for a non-limit reason
        └── RequestTooLarge         the request can never fit the provider's limit

Messages never contain a secret: they name keys by id, name or masked form.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "ConfigError",
    "DuplicateKey",
    "InvalidInput",
    "KeyNotFound",
    "KeyrelayError",
    "KeystoreCorrupt",
    "KeystoreExists",
    "KeystoreLocked",
    "KeystoreMissing",
    "KeystoreReadOnly",
    "KeystoreUnavailable",
    "KeystoreUnreachable",
    "LastEnabledKey",
    "LeaseLost",
    "MasterKeyError",
    "NoKeyAvailable",
    "ProviderError",
    "RequestTooLarge",
]

ExhaustionReason = Literal["all_cooling", "all_busy", "none_enabled"]


class KeyrelayError(Exception):
    """Root of every error keyrelay raises on purpose."""


class InvalidInput(KeyrelayError, ValueError):
    """A value that cannot be accepted. The message names the field, never echoes the value."""


class ConfigError(InvalidInput):
    """A setting or RotationConfig value is unknown or invalid."""


class MasterKeyError(KeyrelayError):
    """The master key is missing, malformed or cannot decrypt."""


class KeystoreUnavailable(KeyrelayError):
    """The keystore database cannot be used as it is. `location` is its file, or its URL without
    the password; the message says what to do."""

    def __init__(self, message: str, *, location: str) -> None:
        super().__init__(message)
        self.location = location

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # picklable (Prefect persists states)
        return (_rebuild_located, (type(self), str(self), self.location))


class KeystoreMissing(KeystoreUnavailable):
    """The keystore is gone where one existed; it is never re-created silently."""


class KeystoreCorrupt(KeystoreUnavailable):
    """The keystore is empty, not a database, or its tables are missing."""


class KeystoreLocked(KeystoreUnavailable):
    """Another process held the keystore's write lock for longer than the busy timeout."""


class KeystoreUnreachable(KeystoreUnavailable):
    """The database server could not be reached (refused, restarting, connections dropped) for
    the whole retry budget. Transient by nature: the caller may try again later."""


class KeystoreReadOnly(KeystoreUnavailable):
    """The keystore cannot be written (file or directory permissions, a read-only mount)."""


class KeystoreExists(KeyrelayError):
    """A keystore is already where `keyrelay db init` was asked to create one."""

    def __init__(self, message: str, *, location: str) -> None:
        super().__init__(message)
        self.location = location

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_rebuild_located, (type(self), str(self), self.location))


def _rebuild_located(cls: Any, message: str, location: str) -> KeyrelayError:
    error: KeyrelayError = cls(message, location=location)
    return error


class KeyNotFound(KeyrelayError, LookupError):
    def __init__(self, key_id: int) -> None:
        super().__init__(f"no key with id {key_id}")
        self.key_id = key_id


class DuplicateKey(KeyrelayError):
    def __init__(self, fingerprint: str, existing_id: int | None = None) -> None:
        where = f" (key {existing_id})" if existing_id is not None else ""
        super().__init__(f"a key with fingerprint {fingerprint} already exists{where}")
        self.fingerprint = fingerprint
        self.existing_id = existing_id


class LastEnabledKey(KeyrelayError):
    def __init__(self, key_id: int, provider: str) -> None:
        super().__init__(
            f"key {key_id} is the last enabled {provider} key; add or enable another first"
        )
        self.key_id = key_id
        self.provider = provider


class LeaseLost(KeyrelayError):
    def __init__(self, lease_id: str) -> None:
        super().__init__(f"lease {lease_id} expired or was reclaimed")
        self.lease_id = lease_id


class NoKeyAvailable(KeyrelayError):
    """Nothing is eligible now. `retry_at` is the earliest moment something may free up
    (None when nothing will free up by itself, e.g. no key enabled)."""

    def __init__(
        self,
        provider: str,
        *,
        reason: ExhaustionReason,
        retry_at: datetime | None,
        detail: Sequence[str] = (),
    ) -> None:
        when = f"; earliest retry at {retry_at.isoformat(timespec='seconds')}" if retry_at else ""
        text = f"no {provider} key available ({reason}){when}"
        if detail:
            text += ": " + "; ".join(detail)
        super().__init__(text)
        self.provider = provider
        self.reason: ExhaustionReason = reason
        self.retry_at = retry_at
        self.detail = tuple(detail)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # picklable for Prefect state persistence
        return (_rebuild_no_key, (self.provider, self.reason, self.retry_at, self.detail))


def _rebuild_no_key(
    provider: str, reason: ExhaustionReason, retry_at: datetime | None, detail: Sequence[str]
) -> NoKeyAvailable:
    return NoKeyAvailable(provider, reason=reason, retry_at=retry_at, detail=detail)


class ProviderError(KeyrelayError):
    """A provider call failed for a reason that is not a rate limit."""


class RequestTooLarge(ProviderError):
    """The request can never fit the provider's limit; retrying on any key is pointless."""
