"""Where the emulator gets "now": injectable so window tests advance time instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "ManualClock", "system_clock"]

# Epoch seconds (wall time): resets are sent to clients as absolute times and as the `Date`
# header, so the emulator's clock must be a wall clock, not a monotonic one.
Clock = Callable[[], float]


def system_clock() -> float:
    return time.time()


class ManualClock:
    """A clock that moves only when told to (a fake for tests)."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a ManualClock only moves forward")
        self.now += seconds
        return self.now
