"""Token-bucket limits (Anthropic's API-key limits): on an injected clock, then over real sockets
with both SDKs, where the headers must say what the bucket holds and when it is full again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import anthropic
import openai
import pytest

from api.emulator import LimitRule, ManualClock, RunningEmulator, WindowLimit
from api.emulator.token_bucket import replay_over_limit
from api.emulator.windows import Bucket, Served, Usage

pytest_plugins = ["tests.emulator.fixtures"]

T0 = 1_767_225_600.0
API_KEY = "sk-ant-api03-bucket-key-0123456789abcdefghij"
OPENAI_KEY = "sk-proj-bucket-key-0123456789abcdefghijklmn"
HELLO = [{"role": "user", "content": "hello there"}]


def tokens(n: int) -> Usage:
    return Usage(input_tokens=n, output_tokens=1)


def bucket(**limit: object) -> Bucket:
    limit.setdefault("window", "token_bucket")
    return Bucket(bucket_id="key:x", scope="key", limit=WindowLimit.model_validate(limit))


def test_a_full_bucket_admits_up_to_its_capacity_at_once() -> None:
    b = bucket(input_tokens=100, window_s=10)
    admitted = [b.commit(now=T0, usage=tokens(30), key_fingerprint="f") for _ in range(4)]
    assert [d.admitted for d in admitted] == [True, True, True, False]
    assert [d.states[0].remaining for d in admitted[:3]] == [70, 40, 10]
    # Full again when the 90 taken have flowed back at 10 per second.
    assert admitted[2].states[0].reset_at == pytest.approx(T0 + 9)
    refused = admitted[3]
    assert refused.states[0].remaining == 10 and not refused.too_large
    assert refused.retry_at == pytest.approx(T0 + 2)  # 20 more tokens at 10 per second


def test_the_bucket_refills_continuously_and_never_above_its_capacity() -> None:
    clock, b = ManualClock(T0), bucket(input_tokens=100, window_s=10)
    assert b.commit(now=clock(), usage=tokens(100), key_fingerprint="f").admitted
    clock.advance(1.9)
    assert not b.decide(now=clock(), usage=tokens(20)).admitted  # 19 in the bucket
    clock.advance(0.1)
    assert b.commit(now=clock(), usage=tokens(20), key_fingerprint="f").admitted
    clock.advance(60)  # far longer than a refill: the bucket holds its capacity, not more
    full = b.decide(now=clock(), usage=tokens(1))
    assert full.states[0].remaining == 99
    assert not b.decide(now=clock(), usage=tokens(101)).admitted
    assert b.served_over_limit() == 0


def test_every_capped_dimension_must_hold_the_cost() -> None:
    b = bucket(requests=2, input_tokens=1000, window_s=10)
    assert b.commit(now=T0, usage=tokens(10), key_fingerprint="f").admitted
    assert b.commit(now=T0, usage=tokens(10), key_fingerprint="f").admitted
    refused = b.decide(now=T0, usage=tokens(10))
    by_dimension = {s.dimension: s.remaining for s in refused.states}
    assert by_dimension == {"requests": 0, "input_tokens": 980}
    assert refused.retry_at == pytest.approx(T0 + 5)  # one request flows back in 10 / 2 s


def test_a_cost_above_the_capacity_is_too_large() -> None:
    refused = bucket(input_tokens=50, window_s=10).decide(now=T0, usage=tokens(51))
    assert refused.too_large and refused.retry_at is None


def test_a_lowered_cap_applies_at_once() -> None:
    b = bucket(input_tokens=100, window_s=10)
    assert b.commit(now=T0, usage=tokens(10), key_fingerprint="f").admitted
    b.limit = WindowLimit(input_tokens=20, window_s=10, window="token_bucket")
    clamped = b.decide(now=T0, usage=tokens(5))  # 90 were left: the new cap holds only 20
    assert clamped.admitted and clamped.states[0].remaining == 15
    assert b.served_over_limit() == 0


def test_the_over_limit_replay_catches_what_a_bucket_could_not_have_held() -> None:
    limit = WindowLimit(input_tokens=100, window_s=10, window="token_bucket")

    def served(at: float, cost: int) -> Served:
        return Served(at=at, usage=tokens(cost), key_fingerprint="f", limit=limit)

    assert replay_over_limit([served(T0, 100), served(T0 + 5, 50)]) == 0
    assert replay_over_limit([served(T0, 100), served(T0 + 4.9, 50), served(T0 + 20, 1)]) == 1


@pytest.fixture
def sdk(emu: RunningEmulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=emu.base_url, api_key=API_KEY, max_retries=0) as client:
        yield client


def ask(client: anthropic.Anthropic) -> dict[str, str]:
    raw = client.messages.with_raw_response.create(
        model="claude-test", max_tokens=256, messages=HELLO
    )
    return dict(raw.headers)


def reset_in_s(headers: dict[str, str], dimension: str, now: float) -> float:
    return (
        datetime.fromisoformat(headers[f"anthropic-ratelimit-{dimension}-reset"]).timestamp() - now
    )


def test_anthropic_input_token_bucket_over_sockets(
    emu: RunningEmulator, emulator_clock: ManualClock, sdk: anthropic.Anthropic
) -> None:
    cost = sdk.messages.count_tokens(model="claude-test", messages=HELLO).input_tokens
    # Three requests fill it; one request's worth flows back every 10 s.
    rule = LimitRule(key=API_KEY, input_tokens=3 * cost, window_s=30, window="token_bucket")
    emu.admin.set_limits([rule])
    now = emulator_clock()
    answers = [ask(sdk) for _ in range(3)]
    assert [h["anthropic-ratelimit-input-tokens-limit"] for h in answers] == [str(3 * cost)] * 3
    remaining = [int(h["anthropic-ratelimit-input-tokens-remaining"]) for h in answers]
    assert remaining == [2 * cost, cost, 0]
    assert [reset_in_s(h, "input-tokens", now) for h in answers] == [10, 20, 30]
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(sdk)
    refused = caught.value.response.headers
    assert refused["retry-after"] == "10"  # when this request's cost fits, not when full
    assert refused["anthropic-ratelimit-input-tokens-remaining"] == "0"
    assert reset_in_s(dict(refused), "input-tokens", now) == 30
    emulator_clock.advance(9.5)
    with pytest.raises(anthropic.RateLimitError) as early:
        ask(sdk)
    assert early.value.response.headers["retry-after"] == "1"  # 0.5 s, rounded up
    emulator_clock.advance(0.5)
    assert ask(sdk)["anthropic-ratelimit-input-tokens-remaining"] == "0"
    counters = emu.admin.key(api_key=API_KEY)
    assert (counters.served, counters.rate_limited) == (4, 2)
    (report,) = emu.admin.buckets()
    assert report.window == "token_bucket" and report.served_over_limit == 0


def test_openai_request_bucket_reports_go_durations(
    emu: RunningEmulator, emulator_clock: ManualClock
) -> None:
    emu.admin.set_limits(
        [LimitRule(key=OPENAI_KEY, requests=2, window_s=10, window="token_bucket")]
    )
    with openai.OpenAI(base_url=emu.openai_base_url, api_key=OPENAI_KEY, max_retries=0) as client:

        def ask_openai() -> dict[str, str]:
            raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=HELLO)
            return dict(raw.headers)

        first, second = ask_openai(), ask_openai()
        assert [first["x-ratelimit-remaining-requests"], first["x-ratelimit-reset-requests"]] == [
            "1",
            "5s",
        ]
        assert second["x-ratelimit-reset-requests"] == "10s"
        emulator_clock.advance(2.5)
        with pytest.raises(openai.RateLimitError) as caught:
            ask_openai()
        headers = caught.value.response.headers
        assert headers["retry-after"] == "3"  # half a request is back; the rest in 2.5 s
        assert headers["x-ratelimit-reset-requests"] == "7.5s"
        emulator_clock.advance(2.5)
        assert ask_openai()["x-ratelimit-remaining-requests"] == "0"


def test_text_blocks_cost_what_the_same_text_as_a_string_costs(
    emu: RunningEmulator, sdk: anthropic.Anthropic
) -> None:
    """LiteLLM sends every message as a list of text blocks, the SDKs as a string: a token
    bucket must charge the same conversation the same."""
    as_strings = [
        {"role": "user", "content": "job 01: hello"},
        {"role": "assistant", "content": "a reply"},
        {"role": "user", "content": "Continue."},
    ]
    as_blocks = [
        {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in as_strings
    ]
    mixed = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"}]}]
    costs = [
        sdk.messages.count_tokens(model="claude-test", messages=messages).input_tokens
        for messages in (as_strings, as_blocks, mixed)
    ]
    assert costs[0] == costs[1]
    assert costs[2] > 2  # a list that is not only text is counted as sent
    for messages in (as_strings, as_blocks):
        sdk.messages.create(model="claude-test", max_tokens=64, messages=messages)
    counters = emu.admin.key(api_key=API_KEY)
    assert counters.input_tokens == 2 * costs[0]
