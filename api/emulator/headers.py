"""Rate-limit headers in each provider's exact format (see shared/RATE_LIMITS.md).

Resets are rounded up (to the second, or to the millisecond for OpenAI durations): a client that
waits until the stated reset must find room, never a second 429.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import formatdate

from api.emulator.windows import DimensionState

__all__ = [
    "UNIFIED_ABBREVIATIONS",
    "anthropic_rate_limit_headers",
    "go_duration",
    "http_date",
    "openai_rate_limit_headers",
    "retry_after_s",
    "rfc3339",
    "unified_headers",
]

# Claim -> the abbreviation in `anthropic-ratelimit-unified-<abbrev>-*` (claude CLI 2.1.332).
UNIFIED_ABBREVIATIONS = {
    "five_hour": "5h",
    "seven_day": "7d",
    "seven_day_overage_included": "7d_oi",
}
_EPSILON_S = 1e-6  # float noise must not push an exact second up to the next one


def http_date(at: float) -> str:
    return formatdate(at, usegmt=True)


def _ceil_s(at: float) -> int:
    return math.ceil(at - _EPSILON_S)


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(_ceil_s(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_after_s(*, retry_at: float, now: float) -> int:
    """Integer seconds, rounded up, at least 1 (a 429 that says 0 invites a tight loop)."""
    return max(1, _ceil_s(retry_at - now))


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String() at millisecond resolution: `20ms`, `1.5s`, `6m0s`, `1h0m0s`."""
    ms = max(0, math.ceil(seconds * 1000 - _EPSILON_S))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, frac = divmod(ms, 1000)
    text = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


def anthropic_rate_limit_headers(states: Iterable[DimensionState]) -> dict[str, str]:
    headers = {}
    for state in states:
        name = state.dimension.replace("_", "-")
        headers[f"anthropic-ratelimit-{name}-limit"] = str(state.limit)
        headers[f"anthropic-ratelimit-{name}-remaining"] = str(max(0, state.remaining))
        headers[f"anthropic-ratelimit-{name}-reset"] = rfc3339(state.reset_at)
    return headers


def openai_rate_limit_headers(states: Iterable[DimensionState], *, now: float) -> dict[str, str]:
    """OpenAI reports only requests and tokens; its resets are relative Go durations."""
    headers = {}
    for state in states:
        if state.dimension not in ("requests", "tokens"):
            continue
        headers[f"x-ratelimit-limit-{state.dimension}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{state.dimension}"] = str(max(0, state.remaining))
        headers[f"x-ratelimit-reset-{state.dimension}"] = go_duration(state.reset_at - now)
    return headers


def unified_headers(
    *, status: str, reset_at: float, utilization: float, claim: str
) -> dict[str, str]:
    """The subscription family: `status` is allowed | allowed_warning | rejected."""
    abbreviation = UNIFIED_ABBREVIATIONS[claim]
    reset = str(_ceil_s(reset_at))
    return {
        "anthropic-ratelimit-unified-status": status,
        "anthropic-ratelimit-unified-reset": reset,
        "anthropic-ratelimit-unified-representative-claim": claim,
        f"anthropic-ratelimit-unified-{abbreviation}-status": status,
        f"anthropic-ratelimit-unified-{abbreviation}-reset": reset,
        f"anthropic-ratelimit-unified-{abbreviation}-utilization": f"{utilization:.2f}",
    }
