"""Gemini API and Vertex AI responses (google.rpc.Status bodies).

429 RESOURCE_EXHAUSTED, QuotaFailure quotaId containing "PerDay"
    quota_exhausted until the next midnight in America/Los_Angeles, when daily quotas reset
    (the accompanying retryDelay is known to be wrong for these); retryable
429 RESOURCE_EXHAUSTED otherwise
    rate_limit, reset from RetryInfo.retryDelay ("41s"), else `retry-after`, else none
    (Vertex's bare "Resource exhausted. Please try again later." has no details)
503 UNAVAILABLE ("The model is overloaded") / 529
    overloaded: it is capacity, not this key's quota
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from keystore.ratelimits.body import error_object, text_at, value_at
from keystore.ratelimits.headers import Headers
from keystore.ratelimits.signal import RateLimitSignal
from keystore.ratelimits.timeparse import ResponseClock, parse_go_duration

QUOTA_TIMEZONE = ZoneInfo("America/Los_Angeles")


def next_midnight(moment: datetime, *, tz: ZoneInfo = QUOTA_TIMEZONE) -> datetime:
    """The first 00:00 in `tz` strictly after `moment`, as an aware datetime in `tz`."""
    tomorrow = moment.astimezone(tz).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(0), tzinfo=tz)


def _details(error: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    details = error.get("details")
    if isinstance(details, list):
        yield from (d for d in details if isinstance(d, Mapping))


def _quota_ids(error: Mapping[str, Any]) -> Iterator[str]:
    for detail in _details(error):
        violations = detail.get("violations")
        if isinstance(violations, list):
            for violation in violations:
                quota_id = text_at(violation, "quotaId")
                if quota_id:
                    yield quota_id


def _retry_delay(error: Mapping[str, Any]) -> str | None:
    for detail in _details(error):
        delay = value_at(detail, "retryDelay")
        if isinstance(delay, str):
            return delay
    return None


def parse_gemini(
    *, status: int, headers: Headers, body: dict[str, Any], clock: ResponseClock
) -> RateLimitSignal | None:
    error = error_object(body)
    rpc_status = text_at(error, "status")

    if status == 529 or (status == 503 and rpc_status in (None, "UNAVAILABLE")):
        resets_at = clock.retry_after(headers.get("retry-after"))
        source = "retry-after" if resets_at else ("error.status" if rpc_status else "status")
        return RateLimitSignal(
            kind="overloaded", resets_at=resets_at, retryable=True, source=source
        )
    if status != 429 and rpc_status != "RESOURCE_EXHAUSTED":
        return None
    if any("PerDay" in quota_id for quota_id in _quota_ids(error)):
        return RateLimitSignal(
            kind="quota_exhausted",
            resets_at=next_midnight(clock.received_at).astimezone(UTC),
            retryable=True,
            source="error.details.quotaId",
        )
    retry_delay = clock.after(parse_go_duration(_retry_delay(error)))
    if retry_delay is not None:
        return RateLimitSignal(
            kind="rate_limit",
            resets_at=retry_delay,
            retryable=True,
            source="error.details.retryDelay",
        )
    retry_after = clock.retry_after(headers.get("retry-after"))
    if retry_after is not None:
        return RateLimitSignal(
            kind="rate_limit", resets_at=retry_after, retryable=True, source="retry-after"
        )
    source = "error.status" if rpc_status else "status"
    return RateLimitSignal(kind="rate_limit", resets_at=None, retryable=True, source=source)
