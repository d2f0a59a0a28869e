"""The oracle's picture of one limit owner: it knows the limit and how the emulator counts, but
not the exact moment the emulator judges a request (after the reply delay, give or take the
event loop), so each model keeps a margin that makes a refusal impossible.

- `FixedWindowModel`: a window opens when a request arrives with no window open and closes
  `window_s` later. The oracle does not know that moment, only that it lies between the opener's
  send and its answer; so it closes its window `window_s` after the opener's answer, and lets no
  request in so late that it could arrive after the earliest possible close (`guard_s`).
- `TokenBucketModel`: the bucket's level at each send; a request goes when the level covers its
  cost plus `reserve_s` worth of refill (requests judged a little later than sent may be judged
  in another order).

`take(cost, now)` either takes the room and returns a `Grant`, or returns when to ask again
(`math.inf`: after the next answer).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from bench.goodput.workloads import LimitOwner

__all__ = ["FixedWindowModel", "Grant", "OwnerModel", "TokenBucketModel", "model_for"]

_CLOSE_MARGIN_S = 0.01


@dataclass(frozen=True)
class Grant:
    model: OwnerModel
    key: str
    window: int = 0  # the fixed window it was granted in
    opener: bool = False  # it opened that window


class OwnerModel:
    def __init__(self, owner: LimitOwner) -> None:
        self.owner = owner
        self._keys = itertools.cycle(owner.keys)  # a group spreads over its keys

    def take(self, cost: int, now: float) -> Grant | float:
        raise NotImplementedError

    def room(self, now: float) -> float:
        """How much it could still take now, as a share of its cap (to prefer the emptiest)."""
        raise NotImplementedError

    def answered(self, grant: Grant, at: float) -> None:
        pass

    def _grant(self, **fields: object) -> Grant:
        return Grant(model=self, key=next(self._keys), **fields)  # type: ignore[arg-type]


class FixedWindowModel(OwnerModel):
    def __init__(self, owner: LimitOwner, *, guard_s: float) -> None:
        super().__init__(owner)
        self.guard_s = guard_s
        self.window = 0
        self.count = 0
        self.opened_at: float | None = None  # the opener's send
        self.opener_answered_at: float | None = None

    def _closed(self, now: float) -> bool:
        if self.opened_at is None:
            return True
        if self.opener_answered_at is None:
            return False
        return now >= self.opener_answered_at + self.owner.window_s + _CLOSE_MARGIN_S

    def room(self, now: float) -> float:
        if self._closed(now):
            return 1.0
        return (self.owner.cap - self.count) / self.owner.cap

    def take(self, cost: int, now: float) -> Grant | float:
        if self._closed(now):
            self.window += 1
            self.count, self.opened_at, self.opener_answered_at = 1, now, None
            return self._grant(window=self.window, opener=True)
        assert self.opened_at is not None
        in_time = now + self.guard_s < self.opened_at + self.owner.window_s
        if self.count < self.owner.cap and in_time:
            self.count += 1
            return self._grant(window=self.window)
        if self.opener_answered_at is None:
            return math.inf
        return self.opener_answered_at + self.owner.window_s + _CLOSE_MARGIN_S

    def answered(self, grant: Grant, at: float) -> None:
        if grant.opener and grant.window == self.window:
            self.opener_answered_at = at


class TokenBucketModel(OwnerModel):
    def __init__(self, owner: LimitOwner, *, reserve_s: float) -> None:
        super().__init__(owner)
        self.reserve = owner.refill_per_s * reserve_s
        self.level = float(owner.cap)
        self.at: float | None = None

    def _level(self, now: float) -> float:
        if self.at is None:
            return self.level
        return min(float(self.owner.cap), self.level + (now - self.at) * self.owner.refill_per_s)

    def room(self, now: float) -> float:
        return self._level(now) / self.owner.cap

    def take(self, cost: int, now: float) -> Grant | float:
        level, need = self._level(now), cost + self.reserve
        if level >= need:
            self.level, self.at = level - cost, now
            return self._grant()
        return now + (need - level) / self.owner.refill_per_s


def model_for(owner: LimitOwner, *, reply_delay_s: float) -> OwnerModel:
    if owner.kind == "fixed":
        return FixedWindowModel(owner, guard_s=reply_delay_s + 0.25)
    return TokenBucketModel(owner, reserve_s=0.1)
