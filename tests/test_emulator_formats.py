"""Header formats, key masking and deterministic replies (pure functions)."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

import pytest

from api.emulator import conversation_digest, fingerprint, mask
from api.emulator.headers import (
    anthropic_rate_limit_headers,
    go_duration,
    http_date,
    openai_rate_limit_headers,
    retry_after_s,
    rfc3339,
    unified_headers,
)
from api.emulator.replies import estimate_tokens, make_reply
from api.emulator.windows import DimensionState

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def parse_go_duration(text: str) -> float:
    """An independent reading of Go durations (units h, m, s, ms), as a client would parse."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[u] for n, u in parts)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0s"),
        (0.02, "20ms"),
        (0.0201, "21ms"),  # rounded up: waiting the stated time must be enough
        (1.5, "1.5s"),
        (12, "12s"),
        (360, "6m0s"),
        (252.172, "4m12.172s"),
        (3600, "1h0m0s"),
        (85656.648, "23h47m36.648s"),
        (-3, "0s"),
    ],
)
def test_go_durations_match_the_formats_openai_sends(seconds: float, expected: str) -> None:
    assert go_duration(seconds) == expected
    # Never shorter than the real wait, and at most a millisecond longer.
    assert max(0, seconds) <= parse_go_duration(expected) + 1e-9 < max(0, seconds) + 0.001


def test_times_round_up_to_whole_seconds() -> None:
    assert rfc3339(T0 + 12) == "2026-01-01T00:00:12Z"
    assert rfc3339(T0 + 12.2) == "2026-01-01T00:00:13Z"
    assert retry_after_s(retry_at=T0 + 12.2, now=T0) == 13
    assert retry_after_s(retry_at=T0 + 12, now=T0) == 12
    assert retry_after_s(retry_at=T0, now=T0) == 1  # never 0: that invites a tight loop
    assert parsedate_to_datetime(http_date(T0)).timestamp() == T0
    assert http_date(T0) == "Thu, 01 Jan 2026 00:00:00 GMT"


STATES = [
    DimensionState("requests", 50, 0, T0 + 20),
    DimensionState("input_tokens", 1000, 0, T0 + 45),
    DimensionState("output_tokens", 1000, 900, T0 + 7.5),
]


def test_anthropic_headers_name_each_bucket_with_rfc3339_resets() -> None:
    headers = anthropic_rate_limit_headers(STATES)
    assert headers == {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:20Z",
        "anthropic-ratelimit-input-tokens-limit": "1000",
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:45Z",
        "anthropic-ratelimit-output-tokens-limit": "1000",
        "anthropic-ratelimit-output-tokens-remaining": "900",
        "anthropic-ratelimit-output-tokens-reset": "2026-01-01T00:00:08Z",
    }


def test_openai_headers_use_relative_go_durations_for_requests_and_tokens_only() -> None:
    states = [
        DimensionState("requests", 3, 0, T0 + 360),
        DimensionState("tokens", 900, 12, T0 + 0.02),
    ]
    headers = openai_rate_limit_headers([*states, STATES[1]], now=T0)
    assert headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-limit-tokens": "900",
        "x-ratelimit-remaining-tokens": "12",
        "x-ratelimit-reset-tokens": "20ms",
    }


def test_unified_headers_use_epoch_seconds_and_the_claims_abbreviation() -> None:
    headers = unified_headers(
        status="rejected", reset_at=T0 + 18000, utilization=1.0, claim="five_hour"
    )
    assert headers == {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": "1767243600",
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-5h-status": "rejected",
        "anthropic-ratelimit-unified-5h-reset": "1767243600",
        "anthropic-ratelimit-unified-5h-utilization": "1.00",
    }
    weekly = unified_headers(status="allowed", reset_at=T0, utilization=0.25, claim="seven_day")
    assert weekly["anthropic-ratelimit-unified-7d-utilization"] == "0.25"


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz-WXYZ", "sk-ant-...WXYZ"),
        ("abcdefghijkl", "...ijkl"),  # 12 chars: a third is 4, all of it the tail
        ("abcdefghijklmno", "a...lmno"),
        ("short", "...t"),
    ],
)
def test_mask_never_shows_more_than_a_third(secret: str, expected: str) -> None:
    assert mask(secret) == expected
    assert len(expected.replace("...", "")) <= len(secret) // 3


def test_fingerprint_is_sha256_prefix() -> None:
    assert fingerprint("abc") == "ba7816bf8f01cfea"


CLI_TURN_1 = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "<system-reminder>\nnoise\n</system-reminder>"},
            {"type": "text", "text": "first question about apples"},
        ],
    },
    {"role": "system", "content": [{"type": "text", "text": "# Environment ..."}]},
]


def test_reply_names_the_turn_the_prior_digest_and_the_last_user_text() -> None:
    reply = make_reply(CLI_TURN_1, max_tokens=1000)
    assert reply.text == (
        f"reply to {conversation_digest([])}: turn 1; last user text: first question about apples"
    )
    assert reply.user_turns == 1 and reply.stop_reason == "end_turn"
    # Turn 2 carries turn 1 and the reply: the digest proves which history the emulator saw.
    turn_2 = [
        *CLI_TURN_1,
        {"role": "assistant", "content": [{"type": "text", "text": reply.text}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]},
        {"role": "user", "content": "second   question\nabout pears and a long tail of more words"},
    ]
    second = make_reply(turn_2, max_tokens=None)
    expected_digest = conversation_digest(
        [("user", "first question about apples"), ("assistant", reply.text)]
    )
    snippet = "second question about pears and a long t"  # 40 chars, whitespace collapsed
    assert second.text == f"reply to {expected_digest}: turn 2; last user text: {snippet}"
    assert make_reply(turn_2, max_tokens=None) == second  # deterministic


def test_a_tiny_max_tokens_truncates_the_reply() -> None:
    reply = make_reply([{"role": "user", "content": "hi"}], max_tokens=1)
    assert reply.text == "repl" and reply.stop_reason == "max_tokens" and reply.output_tokens == 1


def test_token_estimate_is_a_quarter_of_the_canonical_json() -> None:
    assert (
        estimate_tokens({"b": "x" * 30, "a": 1}) == estimate_tokens({"a": 1, "b": "x" * 30}) == 11
    )
