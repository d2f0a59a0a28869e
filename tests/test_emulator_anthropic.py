"""The Anthropic front-end through the official SDK over real sockets (clock injected)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import anthropic
import httpx
import pytest

from api.emulator import (
    EmulatorConfig,
    FaultRule,
    KeyMatch,
    LimitRule,
    ManualClock,
    RunningEmulator,
    WindowLimit,
    conversation_digest,
    serve_emulator,
)
from api.emulator.headers import http_date

pytest_plugins = ["tests.emulator.fixtures"]

API_KEY = "sk-ant-api03-test-key-0123456789abcdefghij"
OAUTH = "sk-ant-oat01-test-token-0123456789abcdefghij"
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def sdk(emu: RunningEmulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=emu.base_url, api_key=API_KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def oauth_sdk(emu: RunningEmulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=emu.base_url, auth_token=OAUTH, max_retries=0) as client:
        yield client


def ask(
    client: anthropic.Anthropic, messages: list[dict[str, str]] = HELLO
) -> anthropic.types.Message:
    return client.messages.create(model="claude-test", max_tokens=256, messages=messages)


def ask_raw(client: anthropic.Anthropic) -> httpx.Headers:
    raw = client.messages.with_raw_response.create(
        model="claude-test", max_tokens=256, messages=HELLO
    )
    return httpx.Headers(dict(raw.headers))


def test_json_reply_is_deterministic_and_carries_the_conversation(sdk: anthropic.Anthropic) -> None:
    first = ask(sdk)
    assert first.content[0].text == (
        f"reply to {conversation_digest([])}: turn 1; last user text: hello there"
    )
    assert first.stop_reason == "end_turn" and first.usage.output_tokens > 0
    history = [*HELLO, {"role": "assistant", "content": first.content[0].text}]
    second = ask(sdk, [*history, {"role": "user", "content": "and then?"}])
    digest = conversation_digest([(m["role"], m["content"]) for m in history])
    assert second.content[0].text == f"reply to {digest}: turn 2; last user text: and then?"


def test_stream_sends_the_event_sequence_the_sdk_and_cli_expect(
    emu: RunningEmulator, sdk: anthropic.Anthropic
) -> None:
    body = {"model": "claude-test", "max_tokens": 256, "messages": HELLO, "stream": True}
    with httpx.stream(
        "POST", f"{emu.base_url}/v1/messages", json=body, headers={"x-api-key": API_KEY}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert set(events[3:-3]) == {"content_block_delta"} and len(events[3:-3]) >= 2
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    with sdk.messages.stream(model="claude-test", max_tokens=256, messages=HELLO) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == ask(sdk).content[0].text
    assert final.stop_reason == "end_turn"


def test_count_tokens_is_answered_without_using_the_window(
    emu: RunningEmulator, sdk: anthropic.Anthropic
) -> None:
    emu.admin.set_limits([LimitRule(requests=1, window_s=60)])
    counted = sdk.messages.count_tokens(model="claude-test", messages=HELLO)
    assert counted.input_tokens > 0
    ask(sdk)  # the one request of the window is still there


def test_a_request_without_a_key_gets_anthropics_401(emu: RunningEmulator) -> None:
    response = httpx.post(
        f"{emu.base_url}/v1/messages", json={"model": "m", "max_tokens": 5, "messages": HELLO}
    )
    assert response.status_code == 401
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "authentication_error"


def test_unknown_keys_are_refused_when_keys_are_configured() -> None:
    config = EmulatorConfig(accepted_keys=[KeyMatch(key=API_KEY)])
    with serve_emulator(config) as running:
        for key, ok in ((API_KEY, True), ("sk-ant-api03-unknown-0000000000000", False)):
            with anthropic.Anthropic(
                base_url=running.base_url, api_key=key, max_retries=0
            ) as client:
                if ok:
                    ask(client)
                else:
                    with pytest.raises(anthropic.AuthenticationError):
                        ask(client)


def test_api_key_429_carries_retry_after_and_per_bucket_headers(
    emu: RunningEmulator, emulator_clock: ManualClock, sdk: anthropic.Anthropic
) -> None:
    emu.admin.set_limits([LimitRule(key=API_KEY, requests=2, window_s=30)])
    now = emulator_clock()
    ok = ask_raw(sdk)
    assert ok["anthropic-ratelimit-requests-limit"] == "2"
    assert ok["anthropic-ratelimit-requests-remaining"] == "1"
    assert ok["date"] == http_date(now)
    assert "anthropic-ratelimit-unified-status" not in ok
    ask(sdk)
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(sdk)
    headers, body = caught.value.response.headers, caught.value.body
    assert body["error"]["type"] == "rate_limit_error"
    assert body["type"] == "error" and body["request_id"].startswith("req_")
    assert headers["retry-after"] == "30"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
    assert reset.timestamp() == now + 30
    emulator_clock.advance(30)
    ask(sdk)  # the window reset when it said it would
    counters = emu.admin.key(api_key=API_KEY)
    assert (counters.requests, counters.served, counters.rate_limited) == (4, 3, 1)
    assert counters.rate_limited_at == [now]


def test_x_api_key_header_is_an_api_key(emu: RunningEmulator) -> None:
    emu.admin.set_limits([LimitRule(requests=5, window_s=30)])
    body = {"model": "claude-test", "max_tokens": 256, "messages": HELLO}
    response = httpx.post(f"{emu.base_url}/v1/messages", json=body, headers={"x-api-key": OAUTH})
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "4"
    assert emu.admin.log()[-1].auth == "x-api-key"


def test_oauth_tokens_get_unified_headers_with_utilization_then_rejected(
    emu: RunningEmulator, emulator_clock: ManualClock, oauth_sdk: anthropic.Anthropic
) -> None:
    emu.admin.set_limits([LimitRule(key_prefix="sk-ant-oat01-", requests=4, window_s=18)])
    start = emulator_clock()
    first = ask_raw(oauth_sdk)
    assert first["anthropic-ratelimit-unified-status"] == "allowed"
    assert first["anthropic-ratelimit-unified-5h-utilization"] == "0.25"
    assert first["anthropic-ratelimit-unified-representative-claim"] == "five_hour"
    assert int(first["anthropic-ratelimit-unified-reset"]) == start + 18
    assert not any(k.startswith("anthropic-ratelimit-requests") for k in first)
    ask(oauth_sdk), ask(oauth_sdk)
    fourth = ask_raw(oauth_sdk)
    assert fourth["anthropic-ratelimit-unified-status"] == "allowed_warning"
    assert fourth["anthropic-ratelimit-unified-5h-utilization"] == "1.00"
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(oauth_sdk)
    headers = caught.value.response.headers
    assert headers["anthropic-ratelimit-unified-status"] == "rejected"
    assert headers["anthropic-ratelimit-unified-5h-status"] == "rejected"
    assert int(headers["anthropic-ratelimit-unified-reset"]) == start + 18
    assert "retry-after" not in headers


def test_the_oauth_beta_header_marks_any_bearer_token_as_oauth(emu: RunningEmulator) -> None:
    emu.admin.set_limits([LimitRule(requests=5, window_s=30)])
    with anthropic.Anthropic(
        base_url=emu.base_url,
        auth_token="plain-token-without-prefix-000000",
        default_headers={"anthropic-beta": "claude-code-20250219,oauth-2025-04-20"},
        max_retries=0,
    ) as client:
        assert ask_raw(client)["anthropic-ratelimit-unified-status"] == "allowed"
    assert emu.admin.log()[-1].credential_kind == "oauth"


def test_token_limits_refuse_and_a_request_over_the_cap_is_too_large(
    emu: RunningEmulator, sdk: anthropic.Anthropic
) -> None:
    emu.admin.set_limits([LimitRule(tokens=60, window_s=10)])
    ask(sdk)  # ~36 tokens
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(sdk)
    assert caught.value.response.headers["anthropic-ratelimit-tokens-remaining"] != "60"
    with pytest.raises(anthropic.RequestTooLargeError) as too_large:
        ask(sdk, [{"role": "user", "content": "x" * 400}])
    assert too_large.value.body["error"]["type"] == "request_too_large"


def fault(emu: RunningEmulator, kind: str, **extra: object) -> None:
    emu.admin.set_faults([FaultRule.model_validate({"kind": kind, **extra})])


def test_overloaded_fault_is_a_529_overloaded_error(
    emu: RunningEmulator, sdk: anthropic.Anthropic
) -> None:
    fault(emu, "overloaded", times=1)
    with pytest.raises(anthropic.OverloadedError) as caught:
        ask(sdk)
    assert caught.value.status_code == 529
    assert caught.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    ask(sdk)  # times=1: the next request is served
    assert emu.admin.key(api_key=API_KEY).faults == {"overloaded": 1}


def test_stream_overloaded_fault_breaks_a_200_stream_with_an_error_event(
    emu: RunningEmulator, sdk: anthropic.Anthropic
) -> None:
    fault(emu, "stream_overloaded")
    with pytest.raises(anthropic.APIStatusError) as caught:  # noqa: SIM117
        with sdk.messages.stream(model="claude-test", max_tokens=256, messages=HELLO) as stream:
            stream.get_final_message()
    assert "overloaded_error" in str(caught.value)
    assert emu.admin.log()[-1].status == 200
    with pytest.raises(anthropic.OverloadedError):
        ask(sdk)  # a non-streaming request cannot carry an SSE error: plain 529


def test_spend_limit_fault_names_the_error_code_and_no_reset(
    emu: RunningEmulator, sdk: anthropic.Anthropic
) -> None:
    emu.admin.set_limits([LimitRule(requests=100, window_s=60)])
    fault(emu, "spend_limit")
    with pytest.raises(anthropic.EnforcedSpendLimitReachedError) as caught:
        ask(sdk)
    body = caught.value.body
    assert body["error"]["details"] == {"error_code": "enforced_spend_limit_reached"}
    assert not [k for k in caught.value.response.headers if "ratelimit" in k or k == "retry-after"]


def test_junk_headers_fault_sends_unparseable_values(
    emu: RunningEmulator, sdk: anthropic.Anthropic
) -> None:
    fault(emu, "junk_headers")
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(sdk)
    headers = caught.value.response.headers
    assert headers["retry-after"] == "abc"
    assert headers["anthropic-ratelimit-requests-reset"] == "not-a-date"


def test_missing_headers_fault_is_a_bare_429(
    emu: RunningEmulator, oauth_sdk: anthropic.Anthropic
) -> None:
    fault(emu, "missing_headers", key_prefix="sk-ant-oat01-")
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(oauth_sdk)
    assert not [k for k in caught.value.response.headers if "ratelimit" in k or k == "retry-after"]


def test_request_too_large_fault_is_a_413(emu: RunningEmulator, sdk: anthropic.Anthropic) -> None:
    fault(emu, "request_too_large", key=API_KEY)
    with pytest.raises(anthropic.RequestTooLargeError):
        ask(sdk)


def test_probabilistic_faults_are_reproducible_over_http(
    emu: RunningEmulator, sdk: anthropic.Anthropic
) -> None:
    outcomes = []
    for _ in range(2):
        fault(emu, "overloaded", probability=0.5, seed=3)
        run = []
        for _ in range(12):
            try:
                ask(sdk)
                run.append(True)
            except anthropic.OverloadedError:
                run.append(False)
        outcomes.append(run)
    assert outcomes[0] == outcomes[1] and 0 < sum(outcomes[0]) < 12


def test_keys_of_a_group_share_one_window(emu: RunningEmulator) -> None:
    emu.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-org", group="org", requests=2, window_s=30)]
    )
    results = []
    for suffix in "abc":
        key = f"sk-ant-api03-org-{suffix * 20}"
        with anthropic.Anthropic(base_url=emu.base_url, api_key=key, max_retries=0) as client:
            try:
                ask(client)
                results.append("ok")
            except anthropic.RateLimitError as exc:
                results.append(exc.response.headers["retry-after"])
    assert results == ["ok", "ok", "30"]
    (bucket,) = emu.admin.buckets()
    assert bucket.bucket_id == "group:org" and bucket.windows[0].requests == 2


def test_an_ip_wide_limit_spans_all_keys_and_names_no_reset(emu: RunningEmulator) -> None:
    emu.admin.set_limits([], ip_limit=WindowLimit(requests=2, window_s=30))
    statuses = []
    for suffix in "abc":
        key = f"sk-ant-api03-any-{suffix * 20}"
        with anthropic.Anthropic(base_url=emu.base_url, api_key=key, max_retries=0) as client:
            try:
                ask(client)
                statuses.append(200)
            except anthropic.RateLimitError as exc:
                statuses.append(429)
                assert not [
                    k for k in exc.response.headers if "ratelimit" in k or k == "retry-after"
                ]
    assert statuses == [200, 200, 429]
