"""Anthropic's unified subscription headers (OAuth bearer tokens: Claude Pro/Max, Claude Code).

    anthropic-ratelimit-unified-status                 allowed | allowed_warning | rejected
    anthropic-ratelimit-unified-reset                  epoch seconds
    anthropic-ratelimit-unified-representative-claim   five_hour | seven_day | ...
    anthropic-ratelimit-unified-<window>-utilization   0..1; window: 5h, 7d, 7d_oi, overage, ...
    anthropic-ratelimit-unified-<window>-reset         epoch seconds
    anthropic-ratelimit-unified-<window>-status

The headers are undocumented, so windows are discovered from whatever names are present rather
than from a fixed list. Only `status: rejected` is a hit; the rest feeds `parse_utilization`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from keystore.ratelimits.buckets import latest
from keystore.ratelimits.headers import Headers
from keystore.ratelimits.signal import RateLimitSignal
from keystore.ratelimits.timeparse import ResponseClock, parse_absolute, parse_decimal

PREFIX = "anthropic-ratelimit-unified-"
STATUS = PREFIX + "status"
RESET = PREFIX + "reset"
CLAIM = PREFIX + "representative-claim"
# Claims whose header abbreviation is known (claude CLI 2.1.332); others are guessed by pattern.
CLAIM_WINDOWS = {"five_hour": "5h", "seven_day": "7d", "seven_day_overage_included": "7d_oi"}
# The overage window is extra paid usage that only starts once the plan windows are spent; its
# utilization says nothing about how close the plan itself is to refusing.
OVERAGE = "overage"

_WINDOW_FIELD = re.compile(
    re.escape(PREFIX) + r"(?P<window>.+)-(?P<field>utilization|reset|status)", re.ASCII
)


@dataclass(slots=True)
class Window:
    name: str
    utilization: float | None = None
    reset: str | None = None
    status: str | None = None


def read_windows(headers: Headers) -> dict[str, Window]:
    windows: dict[str, Window] = {}
    for header in headers.names():
        match = _WINDOW_FIELD.fullmatch(header)
        if match is None:
            continue
        window = windows.setdefault(match["window"], Window(name=match["window"]))
        value = headers.get(header)
        if match["field"] == "utilization":
            window.utilization = parse_fraction(value)
        elif match["field"] == "reset":
            window.reset = value
        else:
            window.status = (value or "").lower()
    return windows


def parse_fraction(value: object) -> float | None:
    """A utilization in 0..1; above 1 is capped (a window can be overrun), junk is None."""
    number = parse_decimal(value)
    if number is None:
        return None
    fraction = float(number)
    return min(1.0, fraction) if math.isfinite(fraction) else None


def _claimed_window(headers: Headers, windows: dict[str, Window]) -> Window | None:
    """The window the server names as binding: claim `five_hour` is header window `5h`, etc."""
    claim = (headers.get(CLAIM) or "").strip().lower()
    if not claim:
        return None
    short = CLAIM_WINDOWS.get(claim) or claim.replace("five_hour", "5h").replace("seven_day", "7d")
    return windows.get(short) or windows.get(claim)


def max_utilization(windows: dict[str, Window]) -> float | None:
    plan = [w.utilization for w in windows.values() if w.name != OVERAGE]
    values = [u for u in plan if u is not None]
    if not values and OVERAGE in windows:
        values = [u for u in (windows[OVERAGE].utilization,) if u is not None]
    return max(values) if values else None


def unified_utilization(headers: Headers) -> float | None:
    """How close the subscription is to refusing: the highest plan-window utilization."""
    return max_utilization(read_windows(headers))


def parse_unified_rejection(headers: Headers, *, clock: ResponseClock) -> RateLimitSignal | None:
    """A `usage_limit` signal when `unified-status` is `rejected`, else None.

    The reset comes from, in order: `unified-reset` (the server's own answer), the claimed
    window's reset, the latest reset among windows marked rejected, `retry-after`.
    """
    if (headers.get(STATUS) or "").strip().lower() != "rejected":
        return None
    windows = read_windows(headers)
    claimed = _claimed_window(headers, windows)
    found = latest([(clock.at(parse_absolute(headers.get(RESET))), RESET)])
    if found is None and claimed is not None:
        found = latest([(clock.at(parse_absolute(claimed.reset)), _reset_header(claimed))])
    if found is None:
        found = latest(
            (clock.at(parse_absolute(w.reset)), _reset_header(w))
            for w in windows.values()
            if w.status == "rejected"
        )
    if found is None:
        found = latest([(clock.retry_after(headers.get("retry-after")), "retry-after")])
    resets_at, source = found if found is not None else (None, STATUS)
    utilization = claimed.utilization if claimed is not None else None
    if utilization is None:
        utilization = max_utilization(windows)
    return RateLimitSignal(
        kind="usage_limit",
        resets_at=resets_at,
        retryable=True,
        source=source,
        utilization=utilization,
    )


def _reset_header(window: Window) -> str:
    return f"{PREFIX}{window.name}-reset"
