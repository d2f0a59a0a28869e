"""Rate-limit windows: decide whether a request fits, and keep what each window actually served.

A `Bucket` is one window owner: a key, a group of keys (org-wide limit) or everything (IP-wide).
Its limit's `window` says how it counts: `fixed` and `sliding` windows here, `token_bucket` in
token_bucket.py. `decide` is pure; `commit` records a served request. Reports are recomputed from
the served requests (not from the config), so "no window served more than its limit" is a real
check of the emulator's own enforcement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from api.emulator.config import WindowLimit
from api.emulator.token_bucket import TokenBuckets, replay_over_limit
from api.emulator.usage import DIMENSIONS, Decision, DimensionState, Served, Usage

__all__ = ["DIMENSIONS", "Bucket", "Decision", "DimensionState", "Served", "Usage"]


@dataclass
class _FixedWindow:
    start: float
    end: float
    served: list[Served] = field(default_factory=list)


class Bucket:
    def __init__(self, *, bucket_id: str, scope: str, limit: WindowLimit) -> None:
        self.bucket_id = bucket_id
        self.scope = scope
        self.limit = limit
        self.served: list[Served] = []
        self.fixed_windows: list[_FixedWindow] = []
        self.levels = TokenBuckets()  # used by `token_bucket` limits only

    def _live(self, now: float) -> list[Served]:
        """The served requests that count against the window at `now`."""
        if self.limit.window == "fixed":
            current = self._current_fixed(now)
            return current.served if current else []
        cutoff = now - self.limit.window_s
        live: list[Served] = []
        for item in reversed(self.served):
            if item.at <= cutoff:
                break
            live.append(item)
        live.reverse()
        return live

    def _current_fixed(self, now: float) -> _FixedWindow | None:
        if self.fixed_windows and now < self.fixed_windows[-1].end:
            return self.fixed_windows[-1]
        return None

    def _reset_at(self, now: float, live: list[Served]) -> float:
        if self.limit.window == "fixed":
            current = self._current_fixed(now)
            return current.end if current else now + self.limit.window_s
        return (live[0].at if live else now) + self.limit.window_s

    def _fits_at(
        self, *, now: float, live: list[Served], dimension: str, cap: int, cost: int
    ) -> float:
        """Earliest time `cost` more of `dimension` fits under `cap` (cost <= cap)."""
        if self.limit.window == "fixed":
            return self._reset_at(now, live)
        used = sum(item.usage.get(dimension) for item in live)
        for item in live:
            used -= item.usage.get(dimension)
            if used + cost <= cap:
                return item.at + self.limit.window_s
        return now

    def decide(self, *, now: float, usage: Usage) -> Decision:
        if self.limit.window == "token_bucket":
            return self.levels.decide(limit=self.limit, now=now, usage=usage)
        live = self._live(now)
        window_reset = self._reset_at(now, live)
        # (dimension, cap, used, cost, when it has room for this request)
        checked: list[tuple[str, int, int, int, float]] = []
        too_large = False
        for dimension in DIMENSIONS:
            cap: int | None = getattr(self.limit, dimension)
            if cap is None:
                continue
            used = sum(item.usage.get(dimension) for item in live)
            cost = usage.get(dimension)
            too_large = too_large or cost > cap
            fits_at = now
            if cost <= cap < used + cost:
                fits_at = self._fits_at(now=now, live=live, dimension=dimension, cap=cap, cost=cost)
            checked.append((dimension, cap, used, cost, fits_at))
        admitted = not too_large and all(used + cost <= cap for _d, cap, used, cost, _f in checked)
        if admitted:
            states = tuple(
                DimensionState(d, cap, cap - used - cost, window_reset)
                for d, cap, used, cost, _f in checked
            )
            utilization = max((min(1.0, (u + c) / cap) for _d, cap, u, c, _f in checked), default=0)
            return Decision(True, False, None, states, float(utilization))
        # Refused: the state as of now; an exhausted dimension resets when this request fits.
        states = tuple(
            DimensionState(d, cap, cap - used, fits_at if used + cost > cap else window_reset)
            for d, cap, used, cost, fits_at in checked
        )
        retry_at = None if too_large else max(f for *_rest, f in checked)
        return Decision(False, too_large, retry_at, states, 1.0)

    def commit(self, *, now: float, usage: Usage, key_fingerprint: str) -> Decision:
        """Decide, and record the request as served when it is admitted."""
        decision = self.decide(now=now, usage=usage)
        if decision.admitted:
            item = Served(at=now, usage=usage, key_fingerprint=key_fingerprint, limit=self.limit)
            if self.limit.window == "fixed":
                current = self._current_fixed(now)
                if current is None:
                    current = _FixedWindow(start=now, end=now + self.limit.window_s)
                    self.fixed_windows.append(current)
                current.served.append(item)
            elif self.limit.window == "token_bucket":
                self.levels.take(limit=self.limit, now=now, usage=usage)
            self.served.append(item)
        return decision

    def served_windows(self) -> list[tuple[float, float, list[Served]]]:
        """(start, end, served) of every window that served something.

        Fixed: the windows as they were. Sliding: for each served request, the window that ends
        at it (the busiest windows are among these, since counts only rise at a request). Token
        buckets are reported like sliding windows; one of those may rightly hold up to twice the
        cap (a full bucket, then a window's refill), so only `served_over_limit` judges them.
        """
        if self.limit.window == "fixed":
            return [(w.start, w.end, list(w.served)) for w in self.fixed_windows if w.served]
        windows = []
        for index, item in enumerate(self.served):
            start = item.at - item.limit.window_s
            first = index
            while first > 0 and self.served[first - 1].at > start:
                first -= 1
            windows.append((start, item.at, self.served[first : index + 1]))
        return windows

    def served_over_limit(self) -> int:
        """Requests whose window (including them) went over the limit in force when served."""
        if self.limit.window == "fixed":
            over = 0
            for window in self.fixed_windows:
                for index, item in enumerate(window.served):
                    over += _exceeds(item.limit, window.served[: index + 1])
            return over
        if self.limit.window == "token_bucket":
            return replay_over_limit(self.served)
        # A sliding window is judged at the request that ends it.
        return sum(_exceeds(served[-1].limit, served) for _s, _e, served in self.served_windows())


def _exceeds(limit: WindowLimit, served: list[Served]) -> bool:
    for dimension in DIMENSIONS:
        cap: int | None = getattr(limit, dimension)
        if cap is not None and sum(item.usage.get(dimension) for item in served) > cap:
            return True
    return False
