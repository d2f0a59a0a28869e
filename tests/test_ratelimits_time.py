"""Time values: Go durations, HTTP-dates, clock skew from `Date`, clamping and bounds."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from keystore.ratelimits import parse_rate_limit
from keystore.ratelimits.timeparse import (
    MAX_HORIZON,
    ResponseClock,
    parse_absolute,
    parse_go_duration,
    parse_http_date,
    parse_seconds,
)
from tests.ratelimit_cases import NOW, at


def anthropic_429(headers: dict[str, str]) -> tuple[Any, ...] | None:
    signal = parse_rate_limit(
        "anthropic",
        status=429,
        headers=headers,
        body={"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
        received_at=NOW,
    )
    return None if signal is None else (signal.kind, signal.resets_at, signal.source)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1s", timedelta(seconds=1)),
        ("6m0s", timedelta(minutes=6)),
        ("12ms", timedelta(milliseconds=12)),
        ("4m12.172s", timedelta(minutes=4, seconds=12, milliseconds=172)),
        ("23h47m36.648s", timedelta(hours=23, minutes=47, seconds=36, milliseconds=648)),
        ("1h0m0s", timedelta(hours=1)),
        ("1.5s", timedelta(seconds=1, milliseconds=500)),
        ("0s", timedelta(0)),
        ("0", timedelta(0)),
        ("250us", timedelta(microseconds=250)),
        ("1500ns", timedelta(microseconds=2)),  # rounded to datetime's microseconds
    ],
)
def test_go_duration(text: str, expected: timedelta) -> None:
    assert parse_go_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", " ", "s", "1", "-1s", "1d", "1e3s", "1.2.3s", "6m0", "m6", "1s junk", "NaN", "∞s"]
)
def test_go_duration_junk_is_absent(text: str) -> None:
    assert parse_go_duration(text) is None


@pytest.mark.parametrize(
    ("reset", "expected"),
    [
        ("4m12.172s", at(0, 4, 12, 172_000)),
        ("23h47m36.648s", at(23, 47, 36, 648_000)),
        ("12ms", at(0, 0, 0, 12_000)),
    ],
)
def test_openai_go_duration_reset_lands_at_received_plus_delta(
    reset: str, expected: datetime
) -> None:
    signal = parse_rate_limit(
        "openai",
        status=429,
        headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": reset},
        body=None,
        received_at=NOW,
    )
    assert signal is not None
    assert (signal.kind, signal.resets_at, signal.source) == (
        "rate_limit",
        expected,
        "x-ratelimit-reset-tokens",
    )


@pytest.mark.parametrize(
    "text",
    [
        "Thu, 01 Jan 2026 00:01:00 GMT",  # IMF-fixdate
        "Thursday, 01-Jan-26 00:01:00 GMT",  # RFC 850
        "Thu Jan  1 00:01:00 2026",  # asctime
    ],
)
def test_http_date_formats(text: str) -> None:
    assert parse_http_date(text) == at(0, 1)
    assert anthropic_429({"retry-after": text}) == ("rate_limit", at(0, 1), "retry-after")


def test_absolute_accepts_rfc3339_epoch_and_http_date() -> None:
    assert parse_absolute("2026-01-01T05:00:00Z") == at(5)
    assert parse_absolute("2026-01-01T06:00:00+01:00") == at(5)
    assert parse_absolute("2026-01-01T05:00:00.250Z") == at(5, 0, 0, 250_000)
    assert parse_absolute("1767243600") == at(5)
    assert parse_absolute(1767243600) == at(5)
    assert parse_absolute("Thu, 01 Jan 2026 05:00:00 GMT") == at(5)


@pytest.mark.parametrize("value", ["12", "12.5", " 7 ", 3])
def test_delay_seconds(value: Any) -> None:
    expected = {"12": 12.0, "12.5": 12.5, " 7 ": 7.0, 3: 3.0}[value]
    assert parse_seconds(value) == timedelta(seconds=expected)


@pytest.mark.parametrize(
    "value", ["-1", "1e3", "NaN", "inf", "0x10", "", "\u0661\u0662", True, None, 1e400]
)
def test_delay_seconds_junk_is_absent(value: Any) -> None:
    assert parse_seconds(value) is None


# --- skew correction: received_at + (absolute - Date) ---------------------------------------

SERVER_30S_BEHIND = "Wed, 31 Dec 2025 23:59:30 GMT"


def test_rfc3339_reset_is_corrected_by_date_header() -> None:
    headers = {
        "date": SERVER_30S_BEHIND,
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:45Z",
    }
    # The server's clock says 75 s remain; ours is 30 s ahead of it.
    assert anthropic_429(headers) == (
        "rate_limit",
        at(0, 1, 15),
        "anthropic-ratelimit-input-tokens-reset",
    )


def test_http_date_retry_after_is_corrected_by_date_header() -> None:
    headers = {
        "Date": "Thu, 01 Jan 2026 00:00:30 GMT",
        "Retry-After": "Thu, 01 Jan 2026 00:01:00 GMT",
    }
    assert anthropic_429(headers) == ("rate_limit", at(0, 0, 30), "retry-after")


def test_unified_epoch_reset_is_corrected_by_date_header() -> None:
    headers = {
        "date": SERVER_30S_BEHIND,
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": "1767243600",
    }
    assert anthropic_429(headers) == (
        "usage_limit",
        at(5, 0, 30),
        "anthropic-ratelimit-unified-reset",
    )


def test_relative_values_ignore_date_header() -> None:
    headers = {"date": SERVER_30S_BEHIND, "retry-after": "12"}
    assert anthropic_429(headers) == ("rate_limit", at(0, 0, 12), "retry-after")


@pytest.mark.parametrize("date", ["garbage", "", "Mon, 01 Jan 2024 00:00:00 GMT"])
def test_unusable_date_header_leaves_absolute_values_alone(date: str) -> None:
    """Junk, and a Date more than a day off our clock, are not trusted for correction."""
    headers = {"date": date, "retry-after": "Thu, 01 Jan 2026 00:01:00 GMT"}
    assert anthropic_429(headers) == ("rate_limit", at(0, 1), "retry-after")


def test_a_date_header_truncated_to_the_second_is_not_a_skew() -> None:
    """A server in step with us sends `Date` without the fraction: 00:00:00 when it is 00:00:00.9
    for both of us. Its resets are already on our clock and must not move 0.9 s later."""
    received = NOW + timedelta(seconds=0.9)
    clock = ResponseClock.from_date_header(
        received_at=received, date="Thu, 01 Jan 2026 00:00:00 GMT"
    )
    assert clock.skew == timedelta(0)
    assert clock.at(at(0, 0, 45)) == at(0, 0, 45)


def test_clock_skew_is_received_minus_date() -> None:
    clock = ResponseClock.from_date_header(received_at=NOW, date=SERVER_30S_BEHIND)
    assert clock.skew == timedelta(seconds=30)
    assert clock.at(at(0, 0, 10)) == at(0, 0, 40)


# --- past, zero, negative and far-future values ------------------------------------------------


def test_past_rfc3339_reset_clamps_to_received_at() -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2025-12-31T23:00:00Z",
    }
    assert anthropic_429(headers) == ("rate_limit", NOW, "anthropic-ratelimit-requests-reset")


def test_past_http_date_retry_after_clamps_to_received_at() -> None:
    assert anthropic_429({"retry-after": "Wed, 31 Dec 2025 23:00:00 GMT"}) == (
        "rate_limit",
        NOW,
        "retry-after",
    )


def test_past_unified_reset_clamps_to_received_at() -> None:
    headers = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": "1767222000",  # one hour before NOW
    }
    assert anthropic_429(headers) == ("usage_limit", NOW, "anthropic-ratelimit-unified-reset")


def test_zero_retry_after_means_now() -> None:
    assert anthropic_429({"retry-after": "0"}) == ("rate_limit", NOW, "retry-after")


@pytest.mark.parametrize("value", ["-5", "-0.5", "1e5", "99999999999999999999999", "NaN"])
def test_negative_or_absurd_retry_after_is_absent(value: str) -> None:
    assert anthropic_429({"retry-after": value}) == ("rate_limit", None, "error.type")


@pytest.mark.parametrize("reset", ["0", "-1767243600", "253402300800", "2030-01-01T00:00:00Z"])
def test_unset_or_far_future_unified_reset_is_absent(reset: str) -> None:
    headers = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": reset,
    }
    assert anthropic_429(headers) == ("usage_limit", None, "anthropic-ratelimit-unified-status")


def test_horizon_bounds_relative_values() -> None:
    clock = ResponseClock(received_at=NOW)
    assert clock.after(MAX_HORIZON) == NOW + MAX_HORIZON
    assert clock.after(MAX_HORIZON + timedelta(seconds=1)) is None
    assert clock.after(timedelta(seconds=-1)) is None
