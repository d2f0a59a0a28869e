"""Anthropic responses beyond the spec vectors: API-key errors and buckets, the unified
subscription headers (OAuth / claude-code), and parse_utilization."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from keystore.ratelimits import parse_rate_limit, parse_utilization
from tests.ratelimit_cases import OVERLOADED, RATE_LIMITED, at, parsed

# --- Anthropic ---------------------------------------------------------------------------------


def anthropic_error(error_type: str, message: str = "refused", **extra: Any) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message, **extra}}


def test_contract_spend_limit_needs_a_person() -> None:
    body = anthropic_error(
        "rate_limit_error", details={"error_code": "contract_spend_limit_reached"}
    )
    assert parsed("anthropic", 429, {"retry-after": "60"}, body) == (
        "quota_exhausted",
        None,
        False,
        "error.details.error_code",
        None,
    )


def test_enforced_spend_limit_in_december_resets_next_january() -> None:
    body = anthropic_error(
        "rate_limit_error", details={"error_code": "enforced_spend_limit_reached"}
    )
    signal = parse_rate_limit(
        "anthropic",
        status=429,
        headers={},
        body=body,
        received_at=datetime(2025, 12, 15, 13, 30, tzinfo=UTC),
    )
    assert signal is not None
    assert (signal.kind, signal.resets_at, signal.retryable) == (
        "quota_exhausted",
        datetime(2026, 1, 1, tzinfo=UTC),
        False,
    )


def test_ramp_limit_is_a_rate_limit() -> None:
    body = anthropic_error("rate_limit_error", details={"error_code": "ramp_limit_exceeded"})
    assert parsed("anthropic", 429, {"retry-after": "30"}, body) == (
        "rate_limit",
        at(0, 0, 30),
        True,
        "retry-after",
        None,
    )


@pytest.mark.parametrize(
    ("status", "body", "source"),
    [
        (402, anthropic_error("billing_error"), "error.type"),
        (402, None, "status"),
        (
            400,
            anthropic_error(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. "
                "Please go to Plans & Billing to upgrade or purchase credits.",
            ),
            "error.message",
        ),
    ],
)
def test_billing_is_quota_exhausted_and_not_retryable(status: int, body: Any, source: str) -> None:
    assert parsed("anthropic", status, {}, body) == ("quota_exhausted", None, False, source, None)


def test_request_too_large_413() -> None:
    body = anthropic_error("request_too_large", "Request exceeds the maximum allowed size")
    assert parsed("anthropic", 413, {}, body) == (
        "request_too_large",
        None,
        False,
        "error.type",
        None,
    )


def test_overloaded_with_retry_after() -> None:
    assert parsed("anthropic", 529, {"retry-after": "7"}, OVERLOADED) == (
        "overloaded",
        at(0, 0, 7),
        True,
        "retry-after",
        None,
    )


def test_retry_after_beats_bucket_resets() -> None:
    headers = {
        "retry-after": "5",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:50Z",
    }
    assert parsed("anthropic", 429, headers, RATE_LIMITED) == (
        "rate_limit",
        at(0, 0, 5),
        True,
        "retry-after",
        None,
    )


def test_no_bucket_at_zero_uses_latest_token_bucket_reset() -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "3",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:59Z",  # not a token bucket
        "anthropic-ratelimit-input-tokens-remaining": "10",
        "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:30Z",
        "anthropic-ratelimit-output-tokens-remaining": "10",
        "anthropic-ratelimit-output-tokens-reset": "2026-01-01T00:00:40Z",
    }
    assert parsed("anthropic", 429, headers, RATE_LIMITED) == (
        "rate_limit",
        at(0, 0, 40),
        True,
        "anthropic-ratelimit-output-tokens-reset",
        None,
    )


def test_exhausted_bucket_with_junk_reset_falls_to_the_one_that_parses() -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "soon",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:25Z",
    }
    assert parsed("anthropic", 429, headers, RATE_LIMITED) == (
        "rate_limit",
        at(0, 0, 25),
        True,
        "anthropic-ratelimit-tokens-reset",
        None,
    )


# --- unified subscription headers (OAuth) ------------------------------------------------------


def unified(status: str, **extra: str) -> dict[str, str]:
    headers = {
        "anthropic-ratelimit-unified-status": status,
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-5h-status": status,
        "anthropic-ratelimit-unified-5h-reset": "1767243600",  # 05:00Z
        "anthropic-ratelimit-unified-5h-utilization": "0.98",
        "anthropic-ratelimit-unified-7d-status": "allowed",
        "anthropic-ratelimit-unified-7d-reset": "1767657600",  # Jan 6
        "anthropic-ratelimit-unified-7d-utilization": "0.41",
    }
    headers.update(extra)
    return headers


@pytest.mark.parametrize("provider", ["claude-code", "anthropic"])
def test_unified_rejected_carries_claimed_window_utilization(provider: str) -> None:
    headers = unified("rejected", **{"anthropic-ratelimit-unified-reset": "1767243600"})
    assert parsed(provider, 429, headers, RATE_LIMITED) == (
        "usage_limit",
        at(5),
        True,
        "anthropic-ratelimit-unified-reset",
        0.98,
    )


def test_unified_rejected_without_overall_reset_uses_claimed_window() -> None:
    headers = unified("rejected", **{"retry-after": "9"})
    assert parsed("claude-code", 429, headers, RATE_LIMITED) == (
        "usage_limit",
        at(5),
        True,
        "anthropic-ratelimit-unified-5h-reset",
        0.98,
    )


def test_unified_weekly_claim_maps_to_the_7d_window() -> None:
    headers = unified(
        "rejected",
        **{
            "anthropic-ratelimit-unified-representative-claim": "seven_day",
            "anthropic-ratelimit-unified-7d-status": "rejected",
        },
    )
    assert parsed("claude-code", 429, headers) == (
        "usage_limit",
        datetime(2026, 1, 6, tzinfo=UTC),
        True,
        "anthropic-ratelimit-unified-7d-reset",
        0.41,
    )


def test_unified_overage_included_claim_maps_to_7d_oi() -> None:
    headers = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-representative-claim": "seven_day_overage_included",
        "anthropic-ratelimit-unified-7d_oi-reset": "1767657600",
        "anthropic-ratelimit-unified-7d_oi-utilization": "1.00",
    }
    assert parsed("claude-code", 429, headers) == (
        "usage_limit",
        datetime(2026, 1, 6, tzinfo=UTC),
        True,
        "anthropic-ratelimit-unified-7d_oi-reset",
        1.0,
    )


def test_unified_without_claim_uses_latest_rejected_window_and_max_utilization() -> None:
    headers = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-5h-status": "rejected",
        "anthropic-ratelimit-unified-5h-reset": "1767243600",
        "anthropic-ratelimit-unified-5h-utilization": "0.7",
        "anthropic-ratelimit-unified-7d-status": "rejected",
        "anthropic-ratelimit-unified-7d-reset": "1767657600",
        "anthropic-ratelimit-unified-7d-utilization": "1.0",
        "anthropic-ratelimit-unified-overage-status": "allowed",
        "anthropic-ratelimit-unified-overage-reset": "1769904000",
    }
    assert parsed("claude-code", 429, headers) == (
        "usage_limit",
        datetime(2026, 1, 6, tzinfo=UTC),
        True,
        "anthropic-ratelimit-unified-7d-reset",
        1.0,
    )


def test_unified_rejected_with_nothing_else() -> None:
    headers = {"anthropic-ratelimit-unified-status": "rejected"}
    assert parsed("claude-code", 429, headers) == (
        "usage_limit",
        None,
        True,
        "anthropic-ratelimit-unified-status",
        None,
    )


@pytest.mark.parametrize("status", ["allowed", "allowed_warning"])
def test_unified_allowed_on_200_is_not_a_limit(status: str) -> None:
    assert parsed("claude-code", 200, unified(status), {"type": "message"}) is None


def test_unified_allowed_with_overage_rejected_on_200_is_not_a_limit() -> None:
    headers = unified("allowed", **{"anthropic-ratelimit-unified-overage-status": "rejected"})
    assert parsed("claude-code", 200, headers, {"type": "message"}) is None


def test_unified_allowed_on_429_is_a_short_rate_limit() -> None:
    headers = unified("allowed_warning", **{"retry-after": "4"})
    assert parsed("claude-code", 429, headers, RATE_LIMITED) == (
        "rate_limit",
        at(0, 0, 4),
        True,
        "retry-after",
        None,
    )


# --- parse_utilization -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "headers", "expected"),
    [
        ("claude-code", unified("allowed_warning"), 0.98),
        ("anthropic", unified("allowed"), 0.98),
        (
            "claude-code",
            {
                "anthropic-ratelimit-unified-5h-utilization": "0.2",
                "anthropic-ratelimit-unified-7d-utilization": "0.35",
                # extra usage is spent only after the plan runs out: not a sign of nearing it
                "anthropic-ratelimit-unified-overage-utilization": "0.9",
            },
            0.35,
        ),
        ("claude-code", {"anthropic-ratelimit-unified-overage-utilization": "0.5"}, 0.5),
        ("claude-code", {"anthropic-ratelimit-unified-5h-utilization": "1.4"}, 1.0),
        (
            "anthropic",
            {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "45",
                "anthropic-ratelimit-input-tokens-limit": "40000",
                "anthropic-ratelimit-input-tokens-remaining": "10000",
                "anthropic-ratelimit-output-tokens-limit": "8000",
                "anthropic-ratelimit-output-tokens-remaining": "8000",
            },
            0.75,
        ),
        (
            "openai",
            {
                "x-ratelimit-limit-requests": "500",
                "x-ratelimit-remaining-requests": "100",
                "x-ratelimit-limit-tokens": "30000",
                "x-ratelimit-remaining-tokens": "27000",
            },
            0.8,
        ),
        (
            "openai",
            {"x-ratelimit-limit-requests": "0", "x-ratelimit-remaining-requests": "0"},
            None,
        ),
        ("openai", {"x-ratelimit-remaining-requests": "5"}, None),
        (
            "gemini",
            {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "1"},
            None,
        ),
        ("anthropic", {}, None),
        ("claude-code", {"anthropic-ratelimit-unified-5h-utilization": "high"}, None),
    ],
)
def test_parse_utilization(provider: str, headers: dict[str, str], expected: float | None) -> None:
    assert parse_utilization(provider, headers=headers) == pytest.approx(expected)


def test_unified_rejected_with_only_retry_after() -> None:
    headers = {"anthropic-ratelimit-unified-status": "rejected", "retry-after": "30"}
    assert parsed("claude-code", 429, headers) == (
        "usage_limit",
        at(0, 0, 30),
        True,
        "retry-after",
        None,
    )
