"""Continuously refilling token buckets, the way Anthropic limits API keys.

Each capped dimension is a bucket that holds at most its cap and refills at cap / window_s per
second; it starts full. A request is admitted when every bucket holds its cost, and takes the cost
out of each. What the headers say:

- `remaining`: the whole tokens left in the bucket (after the request when admitted, now when not);
- `reset`: when the bucket will be full again (Anthropic: "fully replenished");
- a refused request's `retry_at` (the 429's `retry-after`): when its cost will fit in every bucket.

`served_over_limit` replays the served requests through fresh buckets, each under the limit in
force when it was served, so it checks the admissions rather than repeating them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from api.emulator.config import WindowLimit
from api.emulator.usage import Decision, DimensionState, Served, Usage, capped

__all__ = ["TokenBuckets", "replay_over_limit"]

# Float noise in a refill must not turn "exactly enough" into a refusal (or an over-limit report).
_TOLERANCE = 1e-6


@dataclass
class _Level:
    tokens: float
    at: float


def _rate(cap: int, limit: WindowLimit) -> float:
    return cap / limit.window_s


class TokenBuckets:
    """The levels of one window owner's buckets, one per capped dimension."""

    def __init__(self) -> None:
        self._levels: dict[str, _Level] = {}

    def level(self, dimension: str, *, cap: int, limit: WindowLimit, now: float) -> float:
        """Tokens in the bucket at `now` (full if it never served; never above the cap in force,
        so a lowered cap applies at once)."""
        level = self._levels.get(dimension)
        if level is None:
            return float(cap)
        refilled = level.tokens + max(0.0, now - level.at) * _rate(cap, limit)
        return min(float(cap), refilled)

    def decide(self, *, limit: WindowLimit, now: float, usage: Usage) -> Decision:
        # (dimension, cap, tokens in the bucket, cost)
        checked = [
            (
                dimension,
                cap,
                self.level(dimension, cap=cap, limit=limit, now=now),
                usage.get(dimension),
            )
            for dimension, cap in capped(limit)
        ]
        too_large = any(cost > cap for _d, cap, _l, cost in checked)
        admitted = not too_large and all(
            cost <= level + _TOLERANCE for _d, _c, level, cost in checked
        )
        if admitted:
            states = tuple(
                _state(dimension, cap, level - cost, limit=limit, now=now)
                for dimension, cap, level, cost in checked
            )
            utilization = max(
                (1 - (level - cost) / cap for _d, cap, level, cost in checked), default=0.0
            )
            return Decision(True, False, None, states, min(1.0, max(0.0, utilization)))
        states = tuple(_state(d, cap, level, limit=limit, now=now) for d, cap, level, _c in checked)
        retry_at = None
        if not too_large:
            retry_at = max(
                now + max(0.0, cost - level) / _rate(cap, limit) for _d, cap, level, cost in checked
            )
        return Decision(False, too_large, retry_at, states, 1.0)

    def take(self, *, limit: WindowLimit, now: float, usage: Usage) -> None:
        """Take an admitted request's cost out of every bucket."""
        for dimension, cap in capped(limit):
            level = self.level(dimension, cap=cap, limit=limit, now=now)
            self._levels[dimension] = _Level(tokens=level - usage.get(dimension), at=now)


def _state(
    dimension: str, cap: int, tokens: float, *, limit: WindowLimit, now: float
) -> DimensionState:
    full_at = now + max(0.0, cap - tokens) / _rate(cap, limit)
    remaining = math.floor(tokens + _TOLERANCE)
    return DimensionState(dimension, cap, max(0, remaining), full_at)


def replay_over_limit(served: Iterable[Served]) -> int:
    """Requests that a bucket (full at the first request) could not have held when served."""
    buckets = TokenBuckets()
    over = 0
    for item in served:
        for dimension, cap in capped(item.limit):
            level = buckets.level(dimension, cap=cap, limit=item.limit, now=item.at)
            if level - item.usage.get(dimension) < -_TOLERANCE:
                over += 1
                break
        buckets.take(limit=item.limit, now=item.at, usage=item.usage)
    return over
