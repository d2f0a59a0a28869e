"""Intervals during which a process certainly held a lease, for checking caps across processes.

A worker records, for every lease, the interval from `acquire` returning to `release` being
called, on CLOCK_MONOTONIC (one clock for every process of the machine). Each interval lies inside
the real lease, so more than `cap` of them overlapping on one key is a real violation, with no
false alarms; fewer proves nothing about the moments the intervals do not cover."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Held", "max_overlap", "parse_held"]


@dataclass(frozen=True)
class Held:
    key_id: int
    start: float  # acquire returned
    end: float  # release was called (or the lease's expiry, for one never released)

    def line(self) -> str:
        return f"{self.key_id} {self.start!r} {self.end!r}"


def parse_held(line: str) -> Held:
    key_id, start, end = line.split()[:3]
    return Held(int(key_id), float(start), float(end))


def max_overlap(spans: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant (one ending as another starts do not overlap)."""
    spans = list(spans)
    events = sorted(
        [(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1])
    )
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak
