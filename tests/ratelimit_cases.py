"""Shared by the rate-limit parser tests: the vectors' NOW (RATE_LIMITS.md), times on that day,
and `parsed`, a comparable tuple of what parse_rate_limit returned."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from keystore.ratelimits import parse_rate_limit

NOW = datetime(2026, 1, 1, tzinfo=UTC)  # = 1767225600

OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
RATE_LIMITED = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


def at(hour: int = 0, minute: int = 0, second: int = 0, microsecond: int = 0) -> datetime:
    return datetime(2026, 1, 1, hour, minute, second, microsecond, tzinfo=UTC)


def parsed(
    provider: str, status: int, headers: Any = None, body: Any = None
) -> tuple[Any, ...] | None:
    signal = parse_rate_limit(
        provider, status=status, headers=headers or {}, body=body, received_at=NOW
    )
    if signal is None:
        return None
    return (signal.kind, signal.resets_at, signal.retryable, signal.source, signal.utilization)
