"""What ANY response (a success as much as a refusal) says about the key's limit buckets.

    read_limits(provider, *, headers, received_at) -> list[BucketReading]

API keys report per-bucket counts (Anthropic `anthropic-ratelimit-{requests,tokens,input-tokens,
output-tokens}-{limit,remaining,reset}`, resets in RFC 3339; OpenAI `x-ratelimit-{limit,remaining}-
{requests,tokens}` and `x-ratelimit-reset-{requests,tokens}` as Go durations). Subscriptions
(OAuth tokens) report windows instead (`anthropic-ratelimit-unified-<window>-{utilization,reset,
status}`, e.g. `5h`, `7d`): a fraction used and when the window resets, no counts. A bucket is
named as the provider names it; windows get a `unified-` prefix. Junk never raises: a value that
does not parse is absent, and a bucket that says nothing usable is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from keystore.ratelimits import anthropic, openai
from keystore.ratelimits.buckets import Bucket, read_buckets
from keystore.ratelimits.headers import Headers, HeadersLike
from keystore.ratelimits.timeparse import (
    ResponseClock,
    parse_absolute,
    parse_go_duration,
    require_aware,
)
from keystore.ratelimits.unified import OVERAGE, read_windows

__all__ = ["BucketReading", "read_limits"]

UNIFIED_PREFIX = "unified-"


@dataclass(frozen=True, slots=True)
class BucketReading:
    bucket: str  # requests | tokens | input-tokens | output-tokens | unified-<window>
    limit: float | None
    remaining: float | None
    utilization: float | None  # 0..1: counts' 1 - remaining/limit, or a window's own figure
    reset_at: datetime | None
    rejected: bool = False  # a subscription window whose status says it refuses now


def read_limits(
    provider: str, *, headers: HeadersLike, received_at: datetime
) -> list[BucketReading]:
    received_at = require_aware(received_at)
    try:
        parsed = Headers(headers)
        clock = ResponseClock.from_date_header(received_at=received_at, date=parsed.get("date"))
        if provider in ("anthropic", "claude-code"):
            return _anthropic(parsed, clock) + _unified(parsed, clock)
        if provider == "openai":
            return _openai(parsed, clock)
    except Exception:  # a parser bug must not break a caller recording a response
        return []
    return []


def _counted(bucket: Bucket, reset_at: datetime | None) -> BucketReading | None:
    # Without a reset nobody can say when the bucket refills: not a reading to act on.
    if bucket.remaining is None or reset_at is None:
        return None
    return BucketReading(
        bucket=bucket.name,
        limit=bucket.limit,
        remaining=bucket.remaining,
        utilization=bucket.used_fraction,
        reset_at=reset_at,
    )


def _anthropic(headers: Headers, clock: ResponseClock) -> list[BucketReading]:
    found = read_buckets(headers, names=anthropic.NAMES, buckets=anthropic.BUCKETS)
    readings = (_counted(b, clock.at(parse_absolute(b.reset_value))) for b in found)
    return [r for r in readings if r is not None]


def _openai(headers: Headers, clock: ResponseClock) -> list[BucketReading]:
    found = read_buckets(headers, names=openai.NAMES, buckets=openai.BUCKETS)
    readings = (_counted(b, clock.after(parse_go_duration(b.reset_value))) for b in found)
    return [r for r in readings if r is not None]


def _unified(headers: Headers, clock: ResponseClock) -> list[BucketReading]:
    readings = []
    for window in read_windows(headers).values():
        reset_at = clock.at(parse_absolute(window.reset))
        # The overage window is paid usage that starts once the plan is spent: it says nothing
        # about when the plan refuses (a rejection comes through the unified status anyway).
        if window.name == OVERAGE or window.utilization is None or reset_at is None:
            continue
        readings.append(
            BucketReading(
                bucket=UNIFIED_PREFIX + window.name,
                limit=None,
                remaining=None,
                utilization=window.utilization,
                reset_at=reset_at,
                rejected=window.status == "rejected",
            )
        )
    return readings
