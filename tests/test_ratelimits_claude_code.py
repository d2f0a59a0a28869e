"""The claude CLI's output: result texts (both separators, with and without a date, zones, DST)
and how stream-json rate_limit_events combine with the final result object."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from keystore.ratelimits import parse_claude_code_output

NOW = datetime(2026, 1, 1, tzinfo=UTC)  # Dec 31 19:00 in New York, 16:00 in Los Angeles


def at(hour: int = 0, minute: int = 0, *, day: int = 1, month: int = 1) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def result(text: str, *, is_error: bool = True, **extra: Any) -> dict[str, Any]:
    return {"type": "result", "subtype": "success", "is_error": is_error, "result": text, **extra}


def event(status: str, **info: Any) -> dict[str, Any]:
    return {
        "type": "rate_limit_event",
        "rate_limit_info": {"status": status, "rateLimitType": "five_hour", **info},
        "uuid": "76258cfb-0dc8-4d4b-8682-77082b59c03f",
        "session_id": "1ae0af5b-89fa-4075-8156-d5d3702f6505",
    }


def parsed(messages: Any, received_at: datetime = NOW) -> tuple[Any, ...] | None:
    signal = parse_claude_code_output(messages, received_at=received_at)
    if signal is None:
        return None
    return (signal.kind, signal.resets_at, signal.retryable, signal.source, signal.utilization)


def result_reset(text: str, received_at: datetime = NOW) -> datetime | None:
    found = parsed([result(text, api_error_status=429)], received_at)
    assert found is not None and found[0] == "usage_limit" and found[3] == "result"
    return found[1]


# --- result text ------------------------------------------------------------------------------


@pytest.mark.parametrize("separator", ["\u00b7", "\u2219"])
def test_time_already_past_today_rolls_to_tomorrow(separator: str) -> None:
    text = f"You've hit your session limit {separator} resets 12pm (America/New_York)"
    # 12pm New York on Dec 31 was 7 hours ago; the CLI means noon on Jan 1 (EST, UTC-5).
    assert result_reset(text) == at(17)


@pytest.mark.parametrize("separator", ["\u00b7", "\u2219"])
def test_time_still_ahead_today_stays_today(separator: str) -> None:
    text = f"You've hit your limit {separator} resets 11pm (America/New_York)"
    assert result_reset(text) == at(4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("You've hit your weekly limit · resets Jan 3 at 4pm (America/Los_Angeles)", at(0, day=4)),
        ("You've hit your Opus limit · resets Jan 3, 4pm (America/Los_Angeles)", at(0, day=4)),
        (
            "You've hit your Sonnet limit · resets Jan 3 at 4\u202fPM (America/Los_Angeles)",
            at(0, day=4),
        ),
        ("You've hit your weekly limit · resets Dec 31 at 5pm (America/Los_Angeles)", at(1)),
        ("You've hit your weekly limit · resets Jan 2 at 9:30am (Europe/Berlin)", at(8, 30, day=2)),
    ],
)
def test_dated_reset(text: str, expected: datetime) -> None:
    assert result_reset(text) == expected


def test_dated_reset_already_past_clamps_rather_than_jumping_a_year() -> None:
    text = "You've hit your weekly limit · resets Dec 31 at 3pm (America/Los_Angeles)"
    assert result_reset(text) == NOW


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("You've hit your session limit · resets 4:30am (Europe/London)", at(4, 30)),
        ("You\u2019ve hit your Opus limit · resets 1am (Asia/Tokyo)", at(16)),
        ("You've hit your limit · resets 6:50pm (America/New_York)", NOW),  # 10 min ago: now
        ("You've hit your limit · resets 6:30pm (America/New_York)", at(23, 30)),  # 30 min ago
        ("You've hit your limit · resets 7 PM (America/New_York)", NOW),
        ("Claude usage limit reached. Your limit will reset at 3pm (Europe/Berlin).", at(14)),
    ],
)
def test_time_only_reset(text: str, expected: datetime) -> None:
    assert result_reset(text) == expected


def test_rolling_to_tomorrow_keeps_wall_clock_across_dst() -> None:
    # Mar 7 15:00 EST; 2pm has passed, and DST starts overnight: 2pm EDT on Mar 8 is 18:00Z.
    received = datetime(2026, 3, 7, 20, 0, tzinfo=UTC)
    text = "You've hit your session limit · resets 2pm (America/New_York)"
    assert result_reset(text, received) == datetime(2026, 3, 8, 18, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "You've hit your session limit · resets 12pm (Mars/Olympus_Mons)",
        "You've hit your session limit · resets 12pm (../../etc/passwd)",
        "You've hit your session limit · resets 13pm (UTC)",
        "You've hit your session limit · resets 25:00 (UTC)",
        "You've hit your weekly limit · resets Foo 3 at 4pm (UTC)",
        "You've hit your weekly limit · resets Feb 30 at 4pm (UTC)",
        "5-hour limit reached ∙ resets 2pm",  # no zone: cannot be placed in time
        "You've hit your limit",
    ],
)
def test_usage_limit_with_unreadable_reset(text: str) -> None:
    assert result_reset(text) is None


def test_old_epoch_format_in_the_past_clamps() -> None:
    assert result_reset("Claude AI usage limit reached|1767222000") == NOW


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'API Error: 500 {"type":"error",'
            '"error":{"type":"overloaded_error","message":"Overloaded"}}',
            ("overloaded", None, True, "result", None),
        ),
        (
            'API Error: 400 {"type":"error","error":{"type":"invalid_request_error",'
            '"message":"Your credit balance is too low to access the Anthropic API."}}',
            ("quota_exhausted", None, False, "result", None),
        ),
        (
            'API Error: 429 {"type":"error","error":{"type":"rate_limit_error","message":"x"}} '
            "· Retrying is disabled",
            ("rate_limit", None, True, "result", None),
        ),
        ('API Error: 401 {"type":"error","error":{"type":"authentication_error"}}', None),
    ],
)
def test_api_error_with_embedded_body(text: str, expected: tuple[Any, ...] | None) -> None:
    assert parsed([result(text)]) == expected


def test_api_key_out_of_credit() -> None:
    assert parsed([result("Credit balance is too low")]) == (
        "quota_exhausted",
        None,
        False,
        "result",
        None,
    )


def test_api_error_status_429_with_unreadable_text() -> None:
    messages = [result("Something went sideways", api_error_status=429)]
    assert parsed(messages) == ("rate_limit", None, True, "api_error_status", None)
    messages = [result("", api_error_status="429")]
    assert parsed(messages) == ("rate_limit", None, True, "api_error_status", None)


def test_api_error_status_529_with_unreadable_text() -> None:
    assert parsed([result("¯\\_(ツ)_/¯", api_error_status=529)]) == (
        "overloaded",
        None,
        True,
        "api_error_status",
        None,
    )


def test_successful_answer_quoting_the_phrase_is_not_a_limit() -> None:
    text = (
        "When a plan runs out the CLI prints `You've hit your limit · resets 3pm (UTC)` and "
        "stops; API Error: 529 Overloaded is another message you may see."
    )
    assert parsed([result(text, is_error=False)]) is None


def test_old_format_counts_even_without_is_error() -> None:
    messages = [result("Claude AI usage limit reached|1767243600", is_error=False)]
    assert parsed(messages) == ("usage_limit", at(5), True, "result", None)


def test_successful_run_is_not_a_limit() -> None:
    assert parsed([event("allowed"), result("Done: 3 files changed.", is_error=False)]) is None


# --- rate_limit_event, and events with results ----------------------------------------------


def test_rejected_event_with_utilization() -> None:
    messages = [event("rejected", resetsAt=1767243600, utilization=1.0)]
    assert parsed(messages) == ("usage_limit", at(5), True, "rate_limit_event.resetsAt", 1.0)


@pytest.mark.parametrize("status", ["allowed", "allowed_warning"])
def test_allowed_events_are_not_limits(status: str) -> None:
    messages = [event(status, resetsAt=1767243600, utilization=0.93, overageStatus="rejected")]
    assert parsed(messages) is None


def test_event_reset_is_preferred_over_result_text() -> None:
    messages = [
        event("rejected", resetsAt=1767243600, utilization=1.0),
        result("You've hit your session limit · resets 6am (UTC)", api_error_status=429),
    ]
    assert parsed(messages) == ("usage_limit", at(5), True, "rate_limit_event.resetsAt", 1.0)


def test_latest_rejected_event_reset_wins() -> None:
    messages = [
        event("rejected", resetsAt=1767243600, rateLimitType="five_hour"),
        event("rejected", resetsAt="1767657600", rateLimitType="seven_day"),
    ]
    assert parsed(messages) == (
        "usage_limit",
        at(0, day=6),
        True,
        "rate_limit_event.resetsAt",
        None,
    )


def test_result_text_fills_in_when_the_event_has_no_time() -> None:
    messages = [
        event("rejected", utilization=0.99),
        result("You've hit your session limit · resets 6am (UTC)", api_error_status=429),
    ]
    assert parsed(messages) == ("usage_limit", at(6), True, "result", 0.99)


def test_rejected_event_without_time_beats_an_untimed_result() -> None:
    messages = [
        event("rejected"),
        result("API Error: Request rejected (429) · Rate limited", api_error_status=429),
    ]
    assert parsed(messages) == ("usage_limit", None, True, "rate_limit_event.status", None)


@pytest.mark.parametrize(
    "messages",
    [
        result("Claude AI usage limit reached|1767243600"),
        json.dumps(result("Claude AI usage limit reached|1767243600")),
        "\n".join(
            [
                json.dumps({"type": "system", "subtype": "init", "session_id": "s"}),
                "not json at all",
                json.dumps(result("Claude AI usage limit reached|1767243600")),
            ]
        ).encode(),
        [json.dumps(result("Claude AI usage limit reached|1767243600"))],
    ],
    ids=["single-object", "stdout-str", "stdout-bytes", "list-of-lines"],
)
def test_output_in_any_shape(messages: Any) -> None:
    assert parsed(messages) == ("usage_limit", at(5), True, "result", None)


@pytest.mark.parametrize("messages", [[], "", None, 42, [None, 1, "x", b"{"], {"type": "result"}])
def test_no_output_is_no_signal(messages: Any) -> None:
    assert parsed(messages) is None
