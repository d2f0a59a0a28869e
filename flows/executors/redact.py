"""Defensive redaction: whatever an executor surfaces (reply text, checkpoint, error message) goes
through a `Redactor` first, which replaces the leased secret with its masked form.

Providers do not echo keys back, but a proxy, a misbehaving gateway or the model itself might, and
a leak in a Prefect result or log line cannot be taken back.
"""

from __future__ import annotations

from typing import Any

from keystore.crypto import mask

__all__ = ["Redactor"]

_MAX_MESSAGE_CHARS = 500


class Redactor:
    """Replaces one secret with `keystore.mask(secret)`. Its repr shows nothing of the secret."""

    __slots__ = ("_masked", "_secret")

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._masked = mask(secret)

    def __repr__(self) -> str:
        return f"Redactor({self._masked})"

    def text(self, value: str) -> str:
        if not self._secret:
            return value
        return value.replace(self._secret, self._masked)

    def excerpt(self, value: str, *, limit: int = _MAX_MESSAGE_CHARS) -> str:
        """A redacted, single-line, bounded excerpt for an exception message."""
        flat = " ".join(self.text(value).split())
        return flat if len(flat) <= limit else flat[: limit - 3] + "..."

    def value(self, value: Any) -> Any:
        """Every string inside a JSON-like value (dicts, lists), keys included."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value
