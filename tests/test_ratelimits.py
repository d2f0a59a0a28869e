"""The test vectors of RATE_LIMITS.md, one by one, and the public API's contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import keystore.ratelimits as ratelimits
from keystore.ratelimits import (
    RateLimitSignal,
    parse_claude_code_output,
    parse_rate_limit,
    parse_utilization,
)
from tests.ratelimit_cases import NOW, at


def anthropic_error(error_type: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": "refused", **extra},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }


RATE_LIMIT_BODY = anthropic_error("rate_limit_error")
GEMINI_MINUTE_BODY = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "41s"},
        ],
    }
}

# id, provider, status, headers, body, expected (kind, resets_at, retryable, source) or None
HTTP_VECTORS: list[tuple[str, str, int, dict[str, str], Any, tuple[Any, ...] | None]] = [
    (
        "A1",
        "anthropic",
        429,
        {"retry-after": "12"},
        RATE_LIMIT_BODY,
        ("rate_limit", at(0, 0, 12), True, "retry-after"),
    ),
    (
        "A2",
        "anthropic",
        429,
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:20Z",
            "anthropic-ratelimit-input-tokens-limit": "30000",
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:45Z",
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "900",
            "anthropic-ratelimit-output-tokens-reset": "2026-01-01T00:00:59Z",
        },
        RATE_LIMIT_BODY,
        ("rate_limit", at(0, 0, 45), True, "anthropic-ratelimit-input-tokens-reset"),
    ),
    (
        "A3",
        "anthropic",
        529,
        {},
        anthropic_error("overloaded_error"),
        ("overloaded", None, True, "error.type"),
    ),
    (
        "A5",
        "anthropic",
        429,
        {},
        anthropic_error("rate_limit_error", details={"error_code": "enforced_spend_limit_reached"}),
        (
            "quota_exhausted",
            datetime(2026, 2, 1, tzinfo=UTC),
            False,
            "error.details.error_code",
        ),
    ),
    (
        "A6",
        "anthropic",
        429,
        {
            "anthropic-ratelimit-unified-status": "rejected",
            "anthropic-ratelimit-unified-reset": "1767243600",
        },
        RATE_LIMIT_BODY,
        ("usage_limit", at(5), True, "anthropic-ratelimit-unified-reset"),
    ),
    (
        "A7",
        "anthropic",
        429,
        {"retry-after": "Thu, 01 Jan 2026 00:01:00 GMT"},
        RATE_LIMIT_BODY,
        ("rate_limit", at(0, 1), True, "retry-after"),
    ),
    ("A8", "anthropic", 429, {"retry-after": "abc"}, None, ("rate_limit", None, True, "status")),
    (
        "O1",
        "openai",
        429,
        {},
        {
            "error": {
                "message": "You exceeded your current quota, please check your plan.",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        },
        ("quota_exhausted", None, False, "error.code"),
    ),
    (
        "O3",
        "openai",
        429,
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-tokens": "20ms",
        },
        {
            "error": {
                "message": "Rate limit reached",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
        },
        ("rate_limit", at(0, 6), True, "x-ratelimit-reset-requests"),
    ),
    (
        "O4",
        "openai",
        429,
        {"retry-after-ms": "1500", "retry-after": "2"},
        None,
        ("rate_limit", at(0, 0, 1, 500_000), True, "retry-after-ms"),
    ),
    (
        "O5",
        "openai",
        429,
        {},
        {
            "error": {
                "message": "Request too large for gpt-4o in organization org-abc on tokens per min "
                "(TPM): Limit 30000, Requested 31538. The input or output tokens must be reduced.",
                "type": "tokens",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
        ("request_too_large", None, False, "error.message"),
    ),
    (
        "G1",
        "gemini",
        429,
        {},
        GEMINI_MINUTE_BODY,
        ("rate_limit", at(0, 0, 41), True, "error.details.retryDelay"),
    ),
    (
        "G3",
        "gemini",
        429,
        {},
        {
            "error": {
                "code": 429,
                "message": "Resource exhausted. Please try again later.",
                "status": "RESOURCE_EXHAUSTED",
            }
        },
        ("rate_limit", None, True, "error.status"),
    ),
]


def result(text: str, **extra: Any) -> dict[str, Any]:
    """A `claude -p --output-format json` final object."""
    return {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "duration_ms": 512,
        "num_turns": 1,
        "result": text,
        "session_id": "1ae0af5b-89fa-4075-8156-d5d3702f6505",
        "total_cost_usd": 0,
        **extra,
    }


CLI_VECTORS: list[tuple[str, list[dict[str, Any]], tuple[Any, ...] | None]] = [
    (
        "C1",
        [
            {
                "type": "rate_limit_event",
                "rate_limit_info": {
                    "status": "allowed",
                    "resetsAt": 1767243600,
                    "rateLimitType": "five_hour",
                    "overageStatus": "rejected",
                    "overageDisabledReason": "org_level_disabled",
                    "isUsingOverage": False,
                },
            }
        ],
        None,
    ),
    (
        "C3",
        [result("Claude AI usage limit reached|1767243600")],
        ("usage_limit", at(5), True, "result"),
    ),
    (
        "C4",
        [
            result(
                "You've hit your weekly limit · resets Jan 3 at 4pm (America/Los_Angeles)",
                api_error_status=429,
            )
        ],
        ("usage_limit", datetime(2026, 1, 4, tzinfo=UTC), True, "result"),
    ),
    (
        "C6",
        [result("API Error: Request rejected (429) · Rate limited", api_error_status=429)],
        ("rate_limit", None, True, "result"),
    ),
    ("C7", [result("API Error: 529 Overloaded")], ("overloaded", None, True, "result")),
]


def summary(signal: RateLimitSignal | None) -> tuple[Any, ...] | None:
    if signal is None:
        return None
    return (signal.kind, signal.resets_at, signal.retryable, signal.source)


@pytest.mark.parametrize(
    ("provider", "status", "headers", "body", "expected"),
    [pytest.param(*vector[1:], id=vector[0]) for vector in HTTP_VECTORS],
)
def test_http_vector(
    provider: str, status: int, headers: dict[str, str], body: Any, expected: tuple[Any, ...] | None
) -> None:
    signal = parse_rate_limit(provider, status=status, headers=headers, body=body, received_at=NOW)
    assert summary(signal) == expected


@pytest.mark.parametrize(
    ("messages", "expected"), [pytest.param(*vector[1:], id=vector[0]) for vector in CLI_VECTORS]
)
def test_claude_code_vector(
    messages: list[dict[str, Any]], expected: tuple[Any, ...] | None
) -> None:
    assert summary(parse_claude_code_output(messages, received_at=NOW)) == expected


def test_resets_at_is_utc_even_when_received_at_is_not() -> None:
    tokyo = timezone(timedelta(hours=9))
    signal = parse_rate_limit(
        "anthropic",
        status=429,
        headers={"retry-after": "12"},
        body=None,
        received_at=NOW.astimezone(tokyo),
    )
    assert signal is not None and signal.resets_at == at(0, 0, 12)
    assert signal.resets_at.tzinfo is UTC


def test_exports() -> None:
    assert sorted(ratelimits.__all__) == [
        "RateLimitSignal",
        "SignalKind",
        "parse_claude_code_output",
        "parse_rate_limit",
        "parse_utilization",
    ]


@pytest.mark.parametrize("provider", ["Anthropic", "claude", "azure", "", None, ["openai"]])
def test_unknown_provider_is_a_caller_bug(provider: Any) -> None:
    with pytest.raises(ValueError, match="unknown provider"):
        parse_rate_limit(provider, status=429, headers={}, body=None, received_at=NOW)
    with pytest.raises(ValueError, match="unknown provider"):
        parse_utilization(provider, headers={})


@pytest.mark.parametrize("received_at", [datetime(2026, 1, 1), "2026-01-01T00:00:00Z", 1767225600])
def test_received_at_must_be_aware(received_at: Any) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_rate_limit("openai", status=429, headers={}, body=None, received_at=received_at)
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_claude_code_output([], received_at=received_at)
