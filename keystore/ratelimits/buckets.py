"""Per-key limit buckets (requests, tokens, ...) as API-key responses report them in headers.

Anthropic and OpenAI both send a limit, a remaining count and a reset for each bucket; only the
header names and the reset format differ, so the naming is data (`BucketNames`) and the reset
value is kept raw for the provider module to interpret.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from keystore.ratelimits.headers import Headers
from keystore.ratelimits.timeparse import parse_decimal


@dataclass(frozen=True, slots=True)
class BucketNames:
    """Header name patterns; `{}` is replaced by the bucket name."""

    limit: str
    remaining: str
    reset: str


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str
    limit: float | None
    remaining: float | None
    reset_header: str
    reset_value: str | None

    @property
    def exhausted(self) -> bool:
        return self.remaining is not None and self.remaining <= 0

    @property
    def used_fraction(self) -> float | None:
        """`1 - remaining/limit` in 0..1, or None when either count is missing or the limit is 0."""
        if self.limit is None or self.remaining is None or self.limit <= 0:
            return None
        return min(1.0, max(0.0, 1.0 - self.remaining / self.limit))


def _count(value: str | None) -> float | None:
    number = parse_decimal(value)
    if number is None:
        return None
    count = float(number)
    return count if math.isfinite(count) else None


def read_buckets(headers: Headers, *, names: BucketNames, buckets: Sequence[str]) -> list[Bucket]:
    """The buckets the headers mention at all (any of limit, remaining or reset present)."""
    found = []
    for bucket in buckets:
        limit = headers.get(names.limit.format(bucket))
        remaining = headers.get(names.remaining.format(bucket))
        reset_header = names.reset.format(bucket)
        reset = headers.get(reset_header)
        if limit is None and remaining is None and reset is None:
            continue
        found.append(
            Bucket(
                name=bucket,
                limit=_count(limit),
                remaining=_count(remaining),
                reset_header=reset_header,
                reset_value=reset,
            )
        )
    return found


def most_used(buckets: Iterable[Bucket]) -> float | None:
    """The used fraction of the most-used bucket: the one that will refuse first."""
    fractions = [f for f in (b.used_fraction for b in buckets) if f is not None]
    return max(fractions) if fractions else None


def latest(candidates: Iterable[tuple[datetime | None, str]]) -> tuple[datetime, str] | None:
    """The latest (moment, source) pair; the key is usable only once every refusing bucket is."""
    known = [(moment, source) for moment, source in candidates if moment is not None]
    return max(known, key=lambda pair: pair[0]) if known else None
