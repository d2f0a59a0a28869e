"""Anthropic Messages API responses, for API keys and OAuth tokens (`claude-code` over HTTP).

Body first, because the body says what kind of refusal it is; headers then say until when:

    error.details.error_code   enforced_spend_limit_reached  quota_exhausted, 1st of next month
                               contract_spend_limit_reached  quota_exhausted, no reset
                               ramp_limit_exceeded           rate_limit
    402 / billing_error / "credit balance is too low"        quota_exhausted, no reset
    529 / overloaded_error (also inside a 200 SSE stream)    overloaded
    413 / request_too_large                                  request_too_large
    unified-status: rejected (OAuth)                         usage_limit (see unified.py)
    429 / rate_limit_error                                   rate_limit

A 400 whose message says the credit balance is too low is what the API actually sends for a
prepaid organisation out of credits; it is billing, not a malformed request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from keystore.ratelimits.body import error_object, text_at
from keystore.ratelimits.buckets import BucketNames, latest, most_used, read_buckets
from keystore.ratelimits.headers import Headers
from keystore.ratelimits.signal import RateLimitSignal, SignalKind
from keystore.ratelimits.timeparse import ResponseClock, parse_absolute
from keystore.ratelimits.unified import parse_unified_rejection

NAMES = BucketNames(
    limit="anthropic-ratelimit-{}-limit",
    remaining="anthropic-ratelimit-{}-remaining",
    reset="anthropic-ratelimit-{}-reset",
)
BUCKETS = ("requests", "tokens", "input-tokens", "output-tokens")
TOKEN_BUCKETS = frozenset({"tokens", "input-tokens", "output-tokens"})
CODE = "error.details.error_code"


def first_of_next_month(moment: datetime) -> datetime:
    """00:00 UTC on the first day of the month after `moment` (UTC): when monthly caps reset."""
    moment = moment.astimezone(UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def parse_anthropic(
    *, status: int, headers: Headers, body: dict[str, Any], clock: ResponseClock
) -> RateLimitSignal | None:
    error = error_object(body)
    error_type = text_at(error, "type")
    error_code = text_at(error, "details", "error_code")
    message = (text_at(error, "message") or "").lower()

    if error_code == "enforced_spend_limit_reached":
        # The workspace's own monthly cap: a timer does help, but only at the month boundary.
        return _final("quota_exhausted", first_of_next_month(clock.received_at), CODE)
    if error_code == "contract_spend_limit_reached":
        return _final("quota_exhausted", None, CODE)
    if status == 402 or error_type == "billing_error":
        return _final("quota_exhausted", None, _type_or_status(error_type))
    if error_type == "invalid_request_error" and "credit balance is too low" in message:
        return _final("quota_exhausted", None, "error.message")
    if status == 529 or error_type == "overloaded_error":
        return _timed("overloaded", clock.retry_after(headers.get("retry-after")), error_type)
    if status == 413 or error_type == "request_too_large":
        return _final("request_too_large", None, _type_or_status(error_type))
    if status >= 400:
        usage = parse_unified_rejection(headers, clock=clock)
        if usage is not None:
            return usage
    if status == 429 or error_type == "rate_limit_error" or error_code == "ramp_limit_exceeded":
        found = reset_from_headers(headers, clock=clock)
        if found is not None:
            return RateLimitSignal(
                kind="rate_limit", resets_at=found[0], retryable=True, source=found[1]
            )
        source = CODE if error_code == "ramp_limit_exceeded" else _type_or_status(error_type)
        return RateLimitSignal(kind="rate_limit", resets_at=None, retryable=True, source=source)
    return None


def reset_from_headers(headers: Headers, *, clock: ResponseClock) -> tuple[datetime, str] | None:
    """`retry-after`; else the latest reset of an exhausted bucket; else the latest token reset."""
    retry_after = clock.retry_after(headers.get("retry-after"))
    if retry_after is not None:
        return retry_after, "retry-after"
    buckets = read_buckets(headers, names=NAMES, buckets=BUCKETS)
    resets = [(b, clock.at(parse_absolute(b.reset_value))) for b in buckets]
    exhausted = latest((at, b.reset_header) for b, at in resets if b.exhausted)
    if exhausted is not None:
        return exhausted
    # No bucket admits to being empty (the 429 raced the counters): the token buckets are the
    # ones that refill slowly, so waiting for the last of them is the safe guess.
    return latest((at, b.reset_header) for b, at in resets if b.name in TOKEN_BUCKETS)


def api_key_utilization(headers: Headers) -> float | None:
    return most_used(read_buckets(headers, names=NAMES, buckets=BUCKETS))


def _type_or_status(error_type: str | None) -> str:
    return "error.type" if error_type else "status"


def _final(kind: SignalKind, resets_at: datetime | None, source: str) -> RateLimitSignal:
    """A refusal a timer will not lift on this key (or only the named one, for monthly caps)."""
    return RateLimitSignal(kind=kind, resets_at=resets_at, retryable=False, source=source)


def _timed(kind: SignalKind, resets_at: datetime | None, error_type: str | None) -> RateLimitSignal:
    source = "retry-after" if resets_at is not None else _type_or_status(error_type)
    return RateLimitSignal(kind=kind, resets_at=resets_at, retryable=True, source=source)
