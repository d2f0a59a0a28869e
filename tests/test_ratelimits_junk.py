"""Junk never raises: whatever a provider or the CLI sends, the parsers return a signal or None.

Every parser is meant to be total, and the public functions have a last-resort `except` that
logs. So "nothing raised" is not enough: these tests also fail if that fallback logged anything,
which would mean a parser raised and was only caught by the safety net.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keystore.ratelimits import (
    RateLimitSignal,
    parse_claude_code_output,
    parse_rate_limit,
    parse_utilization,
)
from keystore.ratelimits import parse as ratelimits_parse
from keystore.ratelimits.timeparse import MAX_HORIZON

# Hypothesis's own diagnostics are not failures of the code under test, and each made CI fail
# once: the global `random` state moving during a draw (a thread another test left running) and
# an "overly large repr" of a 43 kB generated input.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PROVIDERS = ["anthropic", "claude-code", "openai", "gemini"]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def no_fallback_logged() -> Iterator[None]:
    handler = _Collect()
    logger = logging.getLogger("keystore.ratelimits")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    messages = [f"{r.getMessage()}: {r.exc_info}" for r in handler.records]
    assert not messages, messages


def assert_well_formed(signal: RateLimitSignal | None) -> None:
    if signal is None:
        return
    assert isinstance(signal, RateLimitSignal)
    assert isinstance(signal.source, str) and signal.source
    if signal.resets_at is not None:
        assert signal.resets_at.utcoffset() is not None
        assert NOW <= signal.resets_at <= NOW + MAX_HORIZON
    if signal.utilization is not None:
        assert 0.0 <= signal.utilization <= 1.0


# --- hand-written nasty inputs ------------------------------------------------------------------

NASTY_VALUES: list[Any] = [
    "",
    " ",
    "0",
    "-1",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "9" * 5000,
    "1" + "0" * 400,
    "\u0661\u0662",  # Arabic-Indic digits
    "12\x00",
    "\uff11\uff12",  # fullwidth digits
    "Thu, 99 Jan 2026 00:01:00 GMT",
    "Thu, 01 Jan 99999 00:01:00 GMT",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "2026-13-45T99:99:99Z",
    "1767243600.5.5",
    "23h47m36.648s" * 50,
    "999999999999h",
    "é" * 100,
    "\ud800",  # lone surrogate
    "rejected",
    "five_hour",
    "\r\n\r\n",
]

HEADER_NAMES = [
    "retry-after",
    "retry-after-ms",
    "date",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-unified-status",
    "anthropic-ratelimit-unified-reset",
    "anthropic-ratelimit-unified-representative-claim",
    "anthropic-ratelimit-unified-5h-utilization",
    "anthropic-ratelimit-unified-5h-reset",
    "anthropic-ratelimit-unified-5h-status",
    "anthropic-ratelimit-unified--reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
]

NASTY_HEADERS: list[Any] = [
    None,
    42,
    "retry-after: 12",
    b"retry-after: 12",
    object(),
    [("retry-after",)],
    [("retry-after", "1", "2")],
    [None, 3, ("retry-after", None), (None, "3")],
    {None: "1", 5: 6, "retry-after": None},
    {"retry-after": 12.5, "date": 0, "anthropic-ratelimit-unified-status": True},
    {"retry-after": 10**5000, "retry-after-ms": -(10**5000), "date": float("nan")},
    iter([("retry-after", "1"), 7]),
    httpx.Headers({"retry-after": "a, b", "date": "x"}),
    {name: value for name, value in zip(HEADER_NAMES, NASTY_VALUES, strict=False)},
    {name: "rejected" for name in HEADER_NAMES},
    {name: "0" for name in HEADER_NAMES},
    {name: "-1767243600" for name in HEADER_NAMES},
]


def _deep(depth: int) -> Any:
    value: Any = {"error": {"type": "rate_limit_error"}}
    for _ in range(depth):
        value = {"error": value, "details": [value]}
    return value


NASTY_BODIES: list[Any] = [
    None,
    0,
    -1.5,
    float("nan"),
    True,
    object(),
    b"\xff\xfe\x00garbage",
    "[" * 100_000,
    "{" * 100_000,
    '{"error": ' * 50_000,
    '{"error": {"type": "rate_limit_er',
    '{"error": 1' + "0" * 5000 + "}",
    "data: {\ndata: }\n\n",
    "event: error\ndata: not json\n\n",
    "event: error\ndata: [1, 2\n\n",
    "event: error\n\n\n\n",
    "data:" * 10_000,
    [],
    [1, "two", None, {"no": "error"}],
    [{"error": None}],
    {"error": None},
    {"error": "a plain string"},
    {"error": ["list"]},
    {"error": {"type": 5, "details": "nope", "message": None, "code": []}},
    {"error": {"details": {"error_code": {"nested": "garbage"}}}},
    {"error": {"status": "RESOURCE_EXHAUSTED", "details": [None, 1, {"violations": "x"}]}},
    {
        "error": {
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"violations": [None, {"quotaId": 7}]}],
        }
    },
    {"error": {"status": "RESOURCE_EXHAUSTED", "details": [{"retryDelay": ["41s"]}]}},
    {"error": {"status": "RESOURCE_EXHAUSTED", "details": [{"retryDelay": "-41s"}]}},
    {"error": {"message": "Please try again in 99999999999999h.", "code": "rate_limit_exceeded"}},
    {"error": {"message": "Request too large" * 1000}},
    {"error": {"code": 10**5000, "details": [{"retryDelay": 10**5000}]}},
    {1: 2, (3,): 4},
    _deep(200),
]

NASTY_CLI: list[Any] = [
    None,
    42,
    object(),
    "{" * 100_000,
    b"\xff" * 10,
    [None, 1, 2.5, [], {}, "", b""],
    [{"type": "rate_limit_event"}],
    [{"type": "rate_limit_event", "rate_limit_info": "rejected"}],
    [{"type": "rate_limit_event", "rate_limit_info": {"status": 1}}],
    [{"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": "soon"}}],
    [{"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": 1e308}}],
    [{"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": -5}}],
    [{"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "utilization": "x"}}],
    [{"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "utilization": 1e9}}],
    [{"type": "result", "result": None, "is_error": "yes", "api_error_status": "abc"}],
    [{"type": "result", "result": 42, "api_error_status": 1e99}],
    [{"type": "result", "result": "x", "api_error_status": 10**5000}],
    [{"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": 10**5000}}],
    [
        {
            "type": "rate_limit_event",
            "rate_limit_info": {"status": "rejected", "utilization": 10**5000},
        }
    ],
    [{"type": "result", "result": ["list"], "api_error_status": float("nan")}],
    [{"type": "result", "is_error": True, "result": "Claude AI usage limit reached|" + "9" * 5000}],
    [
        {
            "type": "result",
            "is_error": True,
            "result": "You've hit your limit · resets 99:99pm (UTC)",
        }
    ],
    [{"type": "result", "is_error": True, "result": "You've hit your limit · resets Jan 99 (UTC)"}],
    [{"type": "result", "is_error": True, "result": "You've hit your limit · resets 1pm (\x00)"}],
    [{"type": "result", "is_error": True, "result": "You've hit your limit · resets 1pm ()"}],
    [
        {
            "type": "result",
            "is_error": True,
            "result": "You've hit your limit · resets 1pm (" + "A" * 5000 + ")",
        }
    ],
    [{"type": "result", "is_error": True, "result": "API Error: 999 {" + "[" * 50_000}],
    [{"type": "result", "is_error": True, "result": "API Error: Request rejected (000)"}],
    [{"type": "result", "is_error": True, "result": "You've hit your " + "limit " * 10_000}],
]


NASTY_STATUSES: list[Any] = [429, 529, 200, 402, 413, 503, -1, 10**30, "429", None, 429.5]
NASTY_STATUSES += [10**5000, "4" * 5000]  # beyond int <-> str conversion limits


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    "status", [pytest.param(s, id=f"status{i}") for i, s in enumerate(NASTY_STATUSES)]
)
def test_nasty_http_inputs_never_raise(provider: str, status: Any) -> None:
    with no_fallback_logged():
        for headers in NASTY_HEADERS:
            for body in NASTY_BODIES[:8]:
                assert_well_formed(
                    parse_rate_limit(
                        provider, status=status, headers=headers, body=body, received_at=NOW
                    )
                )
        for body in NASTY_BODIES:
            assert_well_formed(
                parse_rate_limit(provider, status=status, headers={}, body=body, received_at=NOW)
            )


@pytest.mark.parametrize("provider", PROVIDERS)
def test_nasty_headers_never_break_utilization(provider: str) -> None:
    with no_fallback_logged():
        for headers in NASTY_HEADERS:
            utilization = parse_utilization(provider, headers=headers)
            assert utilization is None or 0.0 <= utilization <= 1.0


def test_nasty_cli_output_never_raises() -> None:
    with no_fallback_logged():
        for messages in NASTY_CLI:
            assert_well_formed(parse_claude_code_output(messages, received_at=NOW))


def test_a_429_with_only_junk_is_still_a_rate_limit_without_reset() -> None:
    headers = {name: "garbage" for name in HEADER_NAMES if "status" not in name}
    signal = parse_rate_limit(
        "anthropic", status=429, headers=headers, body="{trunc", received_at=NOW
    )
    assert signal == RateLimitSignal(
        kind="rate_limit", resets_at=None, retryable=True, source="status"
    )


# --- generated inputs -------------------------------------------------------------------------

junk_text = st.one_of(
    st.sampled_from(NASTY_VALUES),
    st.text(max_size=40),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.decimals(allow_nan=False, places=3).map(lambda d: f"{d}s"),
    st.sampled_from(["1s", "6m0s", "12ms", "4m12.172s", "1767243600", "2026-01-01T00:00:45Z"]),
)
header_names = st.sampled_from(HEADER_NAMES).flatmap(
    lambda name: st.sampled_from([name, name.upper(), name.title()])
)
headers_strategy = st.dictionaries(header_names, junk_text, max_size=8)

BODY_KEYS = [
    "error",
    "type",
    "message",
    "code",
    "status",
    "details",
    "error_code",
    "violations",
    "quotaId",
    "retryDelay",
    "@type",
]
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    junk_text,
    st.sampled_from(
        [
            "rate_limit_error",
            "overloaded_error",
            "billing_error",
            "enforced_spend_limit_reached",
            "insufficient_quota",
            "RESOURCE_EXHAUSTED",
            "GenerateRequestsPerDayPerProjectPerModel",
            "Request too large for gpt-4o",
            "Please try again in 1.5s",
        ]
    ),
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(BODY_KEYS), children, max_size=5),
    ),
    max_leaves=25,
)


def _encodings(value: Any) -> st.SearchStrategy[Any]:
    text = json.dumps(value)
    return st.sampled_from(
        [
            value,
            text,
            text.encode(),
            text[: len(text) // 2],
            f"event: error\ndata: {text}\n\n",
            f"data: {text}\n\n".encode(),
        ]
    )


bodies = st.one_of(json_value.flatmap(_encodings), st.binary(max_size=64), st.text(max_size=64))


@settings(max_examples=300, deadline=None, database=None)
@given(
    provider=st.sampled_from(PROVIDERS),
    status=st.one_of(st.sampled_from([200, 400, 402, 413, 429, 503, 529]), st.integers()),
    headers=headers_strategy,
    body=bodies,
)
def test_generated_http_inputs_never_raise(
    provider: str, status: int, headers: dict[str, str], body: Any
) -> None:
    with no_fallback_logged():
        assert_well_formed(
            parse_rate_limit(provider, status=status, headers=headers, body=body, received_at=NOW)
        )
        utilization = parse_utilization(provider, headers=headers)
        assert utilization is None or 0.0 <= utilization <= 1.0


RESULT_TEMPLATES = [
    "Claude AI usage limit reached|{}",
    "You've hit your limit · resets {} (America/New_York)",
    "You've hit your weekly limit ∙ resets {} ({})",
    "API Error: {} {}",
    "{}",
]
result_text = st.builds(
    lambda template, parts: template.format(*parts),
    st.sampled_from(RESULT_TEMPLATES),
    st.lists(junk_text, min_size=2, max_size=2),
)
cli_message = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("rate_limit_event"),
            "rate_limit_info": st.dictionaries(
                st.sampled_from(["status", "resetsAt", "utilization", "rateLimitType"]),
                st.one_of(json_leaf, st.sampled_from(["rejected", "allowed"])),
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("result"),
            "is_error": st.one_of(st.booleans(), json_leaf),
            "api_error_status": json_leaf,
            "result": st.one_of(result_text, json_leaf),
        }
    ),
    json_value,
)


@settings(max_examples=300, deadline=None, database=None)
@given(messages=st.lists(cli_message, max_size=5))
def test_generated_cli_output_never_raises(messages: list[Any]) -> None:
    with no_fallback_logged():
        assert_well_formed(parse_claude_code_output(messages, received_at=NOW))


def _broken_parser(**_: Any) -> RateLimitSignal | None:
    raise RuntimeError("a parser bug")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, RateLimitSignal(kind="rate_limit", resets_at=None, retryable=True, source="status")),
        (529, RateLimitSignal(kind="overloaded", resets_at=None, retryable=True, source="status")),
        (200, None),
    ],
)
def test_safety_net_classifies_by_status_and_logs(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    status: int,
    expected: RateLimitSignal | None,
) -> None:
    """The net the tests above prove unused: a parser bug degrades to status-only, loudly."""
    monkeypatch.setitem(ratelimits_parse._PARSERS, "openai", _broken_parser)
    with caplog.at_level(logging.ERROR, logger="keystore.ratelimits"):
        signal = parse_rate_limit(
            "openai", status=status, headers={"retry-after": "5"}, body=None, received_at=NOW
        )
    assert signal == expected
    assert [r.getMessage() for r in caplog.records] == [
        "could not read a response from openai; classifying by status only"
    ]
