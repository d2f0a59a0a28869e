"""The OpenAI front-end through the official SDK over real sockets (clock injected)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import openai
import pytest

from api.emulator import FaultRule, LimitRule, ManualClock, RunningEmulator, conversation_digest
from api.emulator.headers import http_date

pytest_plugins = ["tests.emulator.fixtures"]

API_KEY = "sk-proj-test-key-0123456789abcdefghijklmn"
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def sdk(emu: RunningEmulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=emu.openai_base_url, api_key=API_KEY, max_retries=0) as client:
        yield client


def ask(client: openai.OpenAI, messages: list[dict[str, str]] = HELLO) -> str:
    completion = client.chat.completions.create(model="gpt-test", messages=messages)
    assert completion.choices[0].finish_reason == "stop"
    return completion.choices[0].message.content or ""


def test_json_reply_is_deterministic_and_counts_turns(sdk: openai.OpenAI) -> None:
    first = ask(sdk)
    assert first == f"reply to {conversation_digest([])}: turn 1; last user text: hello there"
    history = [
        {"role": "system", "content": "be brief"},
        *HELLO,
        {"role": "assistant", "content": first},
    ]
    digest = conversation_digest([("user", "hello there"), ("assistant", first)])
    second = ask(sdk, [*history, {"role": "user", "content": "more"}])
    assert second == f"reply to {digest}: turn 2; last user text: more"


def test_stream_sends_data_chunks_usage_and_done(emu: RunningEmulator, sdk: openai.OpenAI) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-test",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ask(sdk)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    body = {"model": "gpt-test", "messages": HELLO, "stream": True}
    auth = {"authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", f"{emu.openai_base_url}/chat/completions", json=body, headers=auth
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_a_request_without_a_key_gets_openais_401(emu: RunningEmulator) -> None:
    body = {"model": "gpt-test", "messages": HELLO}
    response = httpx.post(f"{emu.openai_base_url}/chat/completions", json=body)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_429_carries_go_duration_resets_and_retry_after(
    emu: RunningEmulator, emulator_clock: ManualClock, sdk: openai.OpenAI
) -> None:
    emu.admin.set_limits([LimitRule(key=API_KEY, requests=2, tokens=10_000, window_s=90)])
    now = emulator_clock()
    raw = sdk.chat.completions.with_raw_response.create(model="gpt-test", messages=HELLO)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-reset-requests"] == "1m30s"
    assert raw.headers["date"] == http_date(now)
    emulator_clock.advance(0.25)
    ask(sdk)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(sdk)
    headers = caught.value.response.headers
    assert caught.value.code == "rate_limit_exceeded"
    assert headers["retry-after"] == "90"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m29.75s"
    assert int(headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert re.search(r"Please try again in 1m29\.75s", caught.value.message)
    assert emu.admin.key(api_key=API_KEY).rate_limited_at == [now + 0.25]


def test_a_request_over_the_token_cap_is_request_too_large(
    emu: RunningEmulator, sdk: openai.OpenAI
) -> None:
    emu.admin.set_limits([LimitRule(tokens=50, window_s=60)])
    with pytest.raises(openai.RateLimitError) as caught:
        ask(sdk, [{"role": "user", "content": "y" * 400}])
    assert re.search(
        r"Request too large for gpt-test .* Limit 50, Requested \d+", caught.value.message
    )
    assert "retry-after" not in caught.value.response.headers


def fault(emu: RunningEmulator, kind: str, **extra: object) -> None:
    emu.admin.set_faults([FaultRule.model_validate({"kind": kind, **extra})])


def test_insufficient_quota_fault(emu: RunningEmulator, sdk: openai.OpenAI) -> None:
    fault(emu, "insufficient_quota")
    with pytest.raises(openai.RateLimitError) as caught:
        ask(sdk)
    assert caught.value.code == "insufficient_quota" and caught.value.type == "insufficient_quota"
    assert "retry-after" not in caught.value.response.headers


def test_request_too_large_fault(emu: RunningEmulator, sdk: openai.OpenAI) -> None:
    fault(emu, "request_too_large")
    with pytest.raises(openai.RateLimitError) as caught:
        ask(sdk)
    assert "Request too large for gpt-test" in caught.value.message


def test_overloaded_fault_is_a_503(emu: RunningEmulator, sdk: openai.OpenAI) -> None:
    fault(emu, "overloaded", times=1)
    with pytest.raises(openai.InternalServerError) as caught:
        ask(sdk)
    assert caught.value.status_code == 503
    ask(sdk)


def test_junk_and_missing_header_faults(emu: RunningEmulator, sdk: openai.OpenAI) -> None:
    fault(emu, "junk_headers", times=1)
    with pytest.raises(openai.RateLimitError) as junk:
        ask(sdk)
    assert junk.value.response.headers["retry-after"] == "abc"
    assert junk.value.response.headers["x-ratelimit-reset-requests"] == "soon"
    fault(emu, "missing_headers", times=1)
    with pytest.raises(openai.RateLimitError) as missing:
        ask(sdk)
    assert not [k for k in missing.value.response.headers if "ratelimit" in k or "retry" in k]
    assert "try again in" not in missing.value.message


def test_anthropic_only_faults_never_fire_on_openai(
    emu: RunningEmulator, sdk: openai.OpenAI
) -> None:
    emu.admin.set_faults([FaultRule(kind="spend_limit"), FaultRule(kind="stream_overloaded")])
    ask(sdk)
