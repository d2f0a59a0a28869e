"""RateLimitSignal: what a provider response says about a key's limit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

SignalKind = Literal[
    "rate_limit", "usage_limit", "quota_exhausted", "overloaded", "request_too_large"
]
SIGNAL_KINDS: tuple[SignalKind, ...] = (
    "rate_limit",
    "usage_limit",
    "quota_exhausted",
    "overloaded",
    "request_too_large",
)


@dataclass(frozen=True, slots=True)
class RateLimitSignal:
    """`retryable` is about the same key: False means a timer will not make this key usable again
    (a person must act, or the request can never fit). Rotating to another key is decided by
    `kind`."""

    kind: SignalKind
    resets_at: datetime | None
    retryable: bool
    source: str
    utilization: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SIGNAL_KINDS:
            raise ValueError(f"unknown signal kind {self.kind!r}")
        if self.resets_at is not None and self.resets_at.tzinfo is None:
            raise ValueError("resets_at must be timezone-aware")

    @property
    def cools_key(self) -> bool:
        """Whether the key that got this signal should stop being leased for a while."""
        return self.kind in ("rate_limit", "usage_limit", "quota_exhausted")

    @property
    def rotates(self) -> bool:
        """Whether another key may succeed where this one was refused."""
        return self.kind in ("rate_limit", "usage_limit", "quota_exhausted")
