"""OpenAI API responses.

    error.code/type insufficient_quota               quota_exhausted, not retryable (the SDK
                                                     retries it by default; it never clears alone)
    message "Request too large for ..." / 413        request_too_large, not retryable
    529 / server_error "... overloaded ..."          overloaded
    429 / rate_limit_exceeded                        rate_limit

Reset precedence (RATE_LIMITS.md): `retry-after-ms`, `retry-after`, "try again in X" in the
message, the latest reset of a bucket at 0, then nothing (the caller backs off).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from keystore.ratelimits.body import error_object, text_at
from keystore.ratelimits.buckets import BucketNames, latest, most_used, read_buckets
from keystore.ratelimits.headers import Headers
from keystore.ratelimits.signal import RateLimitSignal
from keystore.ratelimits.timeparse import ResponseClock, parse_go_duration, parse_milliseconds

NAMES = BucketNames(
    limit="x-ratelimit-limit-{}",
    remaining="x-ratelimit-remaining-{}",
    reset="x-ratelimit-reset-{}",
)
BUCKETS = ("requests", "tokens")

_TRY_AGAIN = re.compile(
    r"try again in ((?:(?:\d+(?:\.\d*)?|\.\d+)(?:ms|us|µs|ns|h|m|s))+)", re.I | re.A
)
_TOO_LARGE = re.compile(r"\brequest too large\b", re.I)
_OVERLOADED = re.compile(r"\boverloaded\b", re.I)


def parse_openai(
    *, status: int, headers: Headers, body: dict[str, Any], clock: ResponseClock
) -> RateLimitSignal | None:
    error = error_object(body)
    code = text_at(error, "code")
    error_type = text_at(error, "type")
    message = text_at(error, "message") or ""

    if "insufficient_quota" in (code, error_type):
        source = "error.code" if code == "insufficient_quota" else "error.type"
        return RateLimitSignal(
            kind="quota_exhausted", resets_at=None, retryable=False, source=source
        )
    if status == 413 or _TOO_LARGE.search(message):
        source = "error.message" if message else "status"
        return RateLimitSignal(
            kind="request_too_large", resets_at=None, retryable=False, source=source
        )
    if status == 529 or (error_type == "server_error" and _OVERLOADED.search(message)):
        resets_at = clock.retry_after(headers.get("retry-after"))
        source = "retry-after" if resets_at else ("error.message" if message else "status")
        return RateLimitSignal(
            kind="overloaded", resets_at=resets_at, retryable=True, source=source
        )
    if status == 429 or code == "rate_limit_exceeded":
        found = _reset(headers, message=message, clock=clock)
        resets_at, source = (
            found if found is not None else (None, "error.code" if code else "status")
        )
        return RateLimitSignal(
            kind="rate_limit", resets_at=resets_at, retryable=True, source=source
        )
    return None


def _reset(headers: Headers, *, message: str, clock: ResponseClock) -> tuple[datetime, str] | None:
    retry_after_ms = clock.after(parse_milliseconds(headers.get("retry-after-ms")))
    if retry_after_ms is not None:
        return retry_after_ms, "retry-after-ms"
    retry_after = clock.retry_after(headers.get("retry-after"))
    if retry_after is not None:
        return retry_after, "retry-after"
    match = _TRY_AGAIN.search(message)
    try_again = clock.after(parse_go_duration(match[1])) if match else None
    if try_again is not None:
        return try_again, "error.message"
    buckets = read_buckets(headers, names=NAMES, buckets=BUCKETS)
    return latest(
        (clock.after(parse_go_duration(b.reset_value)), b.reset_header)
        for b in buckets
        if b.exhausted
    )


def api_key_utilization(headers: Headers) -> float | None:
    return most_used(read_buckets(headers, names=NAMES, buckets=BUCKETS))
