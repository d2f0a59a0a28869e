"""What a run does when no key of its provider can be leased (RotationConfig decides):

- every key busy (leased by other runs)                              -> wait in-process, polling:
  leases end when their holders finish, so this is a queue, not a rate limit;
- rate limits, the reset within `inline_wait_max_s`                  -> wait in-process;
- rate limits, `auto_wait` on, the reset within `max_wait_s`         -> defer the run;
- otherwise (`auto_wait` off, a reset too far, nothing will reset)   -> fail, naming the keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flows.errors import PoolExhausted
from keystore import RotationConfig

__all__ = ["BUSY_POLL_S", "Decision", "Defer", "Fail", "WaitInline", "decide"]

BUSY_POLL_S = 0.25  # a busy pool frees a slot whenever a holder releases: look again soon


@dataclass(frozen=True)
class WaitInline:
    until: datetime


@dataclass(frozen=True)
class Defer:
    until: datetime


@dataclass(frozen=True)
class Fail:
    message: str


Decision = WaitInline | Defer | Fail


def decide(exhausted: PoolExhausted, config: RotationConfig, *, now: datetime) -> Decision:
    retry_at = exhausted.retry_at
    keys = "; ".join(exhausted.detail) or "no keys"
    if retry_at is None:
        return Fail(f"no {exhausted.provider} key can be used ({exhausted.reason}): {keys}")
    wait_s = max(0.0, (retry_at - now).total_seconds())
    if exhausted.reason == "all_busy":
        # Leases end when their holders finish, usually long before they expire.
        return WaitInline(min(retry_at, now + timedelta(seconds=BUSY_POLL_S)))
    if not config.auto_wait:
        return Fail(f"every {exhausted.provider} key is rate-limited and auto_wait is off: {keys}")
    if wait_s <= config.inline_wait_max_s:
        return WaitInline(retry_at)
    if wait_s <= config.max_wait_s:
        return Defer(retry_at)
    return Fail(
        f"every {exhausted.provider} key is spent until {retry_at.isoformat(timespec='seconds')}, "
        f"{wait_s:.0f} s away, beyond max_wait_s={config.max_wait_s:g}: {keys}"
    )
