"""OpenAI and Gemini responses beyond the spec vectors: reset precedence, buckets, daily
quotas, overload."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from keystore.ratelimits import parse_rate_limit
from tests.ratelimit_cases import at, parsed

# --- OpenAI --------------------------------------------------------------------------------------


def openai_rate_limited(message: str = "Rate limit reached") -> dict[str, Any]:
    return {"error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}}


def test_openai_try_again_in_message() -> None:
    body = openai_rate_limited(
        "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 29000, "
        "Requested 1500. Please try again in 1.574s. Visit https://platform.openai.com/account."
    )
    assert parsed("openai", 429, {}, body) == (
        "rate_limit",
        at(0, 0, 1, 574_000),
        True,
        "error.message",
        None,
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250", "retry-after": "2"}, (at(0, 0, 0, 250_000), "retry-after-ms")),
        ({"retry-after-ms": "junk", "retry-after": "2"}, (at(0, 0, 2), "retry-after")),
        ({"retry-after": "2", "x-ratelimit-remaining-requests": "0"}, (at(0, 0, 2), "retry-after")),
        ({"retry-after": "x"}, (at(0, 0, 20), "error.message")),
    ],
)
def test_openai_precedence(headers: dict[str, str], expected: tuple[datetime, str]) -> None:
    body = openai_rate_limited("Please try again in 20s.")
    moment, source = expected
    assert parsed("openai", 429, headers, body) == ("rate_limit", moment, True, source, None)


def test_openai_latest_exhausted_bucket_wins() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "1m30s",
    }
    assert parsed("openai", 429, headers, openai_rate_limited()) == (
        "rate_limit",
        at(0, 1, 30),
        True,
        "x-ratelimit-reset-tokens",
        None,
    )


def test_openai_no_bucket_at_zero_means_back_off() -> None:
    headers = {"x-ratelimit-remaining-requests": "4", "x-ratelimit-reset-requests": "1s"}
    assert parsed("openai", 429, headers, openai_rate_limited()) == (
        "rate_limit",
        None,
        True,
        "error.code",
        None,
    )


def test_openai_overloaded_server_error() -> None:
    body = {
        "error": {
            "message": "That model is currently overloaded with other requests.",
            "type": "server_error",
        }
    }
    assert parsed("openai", 503, {}, body) == ("overloaded", None, True, "error.message", None)


# --- Gemini ---------------------------------------------------------------------------------------


def gemini_quota(quota_id: str, retry_delay: str | None = "41s") -> dict[str, Any]:
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": quota_id}],
        }
    ]
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        )
    return {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": details}}


def test_gemini_daily_quota_resets_at_midnight_in_los_angeles() -> None:
    # NOW is 16:00 on Dec 31 in Los Angeles (PST, UTC-8): the next midnight there is 08:00Z.
    body = gemini_quota("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "41s")
    assert parsed("gemini", 429, {}, body) == (
        "quota_exhausted",
        at(8),
        True,
        "error.details.quotaId",
        None,
    )


def test_gemini_daily_quota_in_summer_uses_pdt() -> None:
    signal = parse_rate_limit(
        "gemini",
        status=429,
        headers={},
        body=gemini_quota("GenerateRequestsPerDayPerProjectPerModel"),
        received_at=datetime(2026, 7, 1, 12, 0, tzinfo=UTC),  # 05:00 PDT
    )
    assert signal is not None and signal.resets_at == datetime(2026, 7, 2, 7, 0, tzinfo=UTC)


def test_gemini_body_as_stream_array_and_retry_after_fallback() -> None:
    body = json.dumps([gemini_quota("GenerateRequestsPerMinutePerProjectPerModel", None)])
    assert parsed("gemini", 429, {"Retry-After": "17"}, body) == (
        "rate_limit",
        at(0, 0, 17),
        True,
        "retry-after",
        None,
    )


def test_gemini_fractional_retry_delay() -> None:
    body = gemini_quota("GenerateContentInputTokensPerModelPerMinute", "2.5s")
    assert parsed("gemini", 429, {}, body) == (
        "rate_limit",
        at(0, 0, 2, 500_000),
        True,
        "error.details.retryDelay",
        None,
    )


def test_gemini_model_overloaded_503() -> None:
    body = {
        "error": {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }
    }
    assert parsed("gemini", 503, {}, body) == ("overloaded", None, True, "error.status", None)
