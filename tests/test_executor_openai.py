"""The `openai` executor against the emulator over real sockets, with real keystore leases.

Every test also checks the emulator's counters: one provider call per turn, no SDK retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from api.emulator import (
    EmulatorConfig,
    FaultRule,
    KeyMatch,
    LimitRule,
    ManualClock,
    RunningEmulator,
    conversation_digest,
    serve_emulator,
)
from flows.executors.anthropic import AnthropicExecutor
from flows.executors.base import TurnResult
from flows.executors.errors import KeyRejected
from flows.executors.openai import OpenAIExecutor
from keystore import Keystore, RateLimitSignal
from tests.executors.helpers import T0, api_key, leased, openai_key

pytest_plugins = ["tests.emulator.fixtures", "tests.executors.fixtures"]
pytestmark = pytest.mark.anyio
ACCEPTED = ("sk-proj-", "sk-ant-api03-")


@pytest.fixture(scope="module")
def emulator(emulator_clock: ManualClock) -> Iterator[RunningEmulator]:
    config = EmulatorConfig(accepted_keys=[KeyMatch(key_prefix=p) for p in ACCEPTED])
    with serve_emulator(config, clock=emulator_clock) as running:
        yield running


def executor(emu: RunningEmulator, **options: Any) -> OpenAIExecutor:
    return OpenAIExecutor(base_url=emu.openai_base_url, clock=lambda: T0, **options)


def reply(prior: list[tuple[str, str]], turn: int, prompt: str) -> str:
    return f"reply to {conversation_digest(prior)}: turn {turn}; last user text: {prompt}"


async def test_a_conversation_carries_every_earlier_turn(
    emu: RunningEmulator, keystore: Keystore
) -> None:
    secret = openai_key("conv")
    said: list[tuple[str, str]] = []
    checkpoint: dict[str, Any] | None = None
    with leased(keystore, "openai", secret) as lease:
        for turn, prompt in enumerate(["apples?", "pears?", "plums?"], start=1):
            result = await executor(emu, system="Be brief.").run_turn(
                lease, prompt=prompt, model=None, checkpoint=checkpoint
            )
            assert isinstance(result, TurnResult)
            assert result.text == reply(said, turn, prompt)
            said += [("user", prompt), ("assistant", result.text)]
            # The system prompt is the executor's option, not part of the conversation.
            assert result.checkpoint == {"messages": [{"role": r, "content": t} for r, t in said]}
            assert result.usage["input_tokens"] > 0 and result.usage["output_tokens"] > 0
            checkpoint = result.checkpoint
    log = emu.admin.log()
    assert [(e.path, e.user_turns, e.messages, e.model) for e in log] == [
        ("/v1/chat/completions", 1, 2, "gpt-5.5"),
        ("/v1/chat/completions", 2, 4, "gpt-5.5"),
        ("/v1/chat/completions", 3, 6, "gpt-5.5"),
    ]
    counters = emu.admin.key(api_key=secret)
    assert (counters.requests, counters.served, counters.rate_limited) == (3, 3, 0)


async def test_an_anthropic_conversation_continues_on_openai(
    emu: RunningEmulator, keystore: Keystore
) -> None:
    # Same checkpoint shape: the fallback provider picks the conversation up.
    with leased(keystore, "anthropic", api_key("primary")) as lease:
        first = await AnthropicExecutor(base_url=emu.base_url).run_turn(
            lease, prompt="one", model=None, checkpoint=None
        )
    assert isinstance(first, TurnResult)
    with leased(keystore, "openai", openai_key("fallback")) as lease:
        second = await executor(emu).run_turn(
            lease, prompt="two", model="gpt-6-luna", checkpoint=first.checkpoint
        )
    assert isinstance(second, TurnResult)
    assert second.text == reply([("user", "one"), ("assistant", first.text)], 2, "two")


async def test_utilization_on_success_comes_from_the_headers(
    emu: RunningEmulator, keystore: Keystore
) -> None:
    secret = openai_key("util")
    emu.admin.set_limits([LimitRule(key=secret, requests=4, window_s=60)])
    with leased(keystore, "openai", secret) as lease:
        result = await executor(emu).run_turn(lease, prompt="hi", model=None, checkpoint=None)
    assert isinstance(result, TurnResult)
    assert result.utilization == pytest.approx(0.25)


async def test_a_429_is_returned_as_a_signal_and_a_retry_from_the_checkpoint_sends_the_prompt_once(
    emu: RunningEmulator, keystore: Keystore
) -> None:
    first, second = openai_key("limited"), openai_key("spare")
    emu.admin.set_limits([LimitRule(key=first, requests=1, window_s=60)])
    with leased(keystore, "openai", first) as lease_a:
        turn1 = await executor(emu).run_turn(lease_a, prompt="one", model=None, checkpoint=None)
        assert isinstance(turn1, TurnResult)
        limited = await executor(emu).run_turn(
            lease_a, prompt="two", model=None, checkpoint=turn1.checkpoint
        )
        with leased(keystore, "openai", second) as lease_b:
            turn2 = await executor(emu).run_turn(
                lease_b, prompt="two", model=None, checkpoint=turn1.checkpoint
            )
    assert limited == RateLimitSignal(
        kind="rate_limit",
        resets_at=T0 + timedelta(seconds=60),
        retryable=True,
        source="retry-after",
    )
    assert isinstance(turn2, TurnResult)
    assert turn2.text == reply([("user", "one"), ("assistant", turn1.text)], 2, "two")
    assert emu.admin.log()[-1].user_turns == 2
    counters = emu.admin.key(api_key=first)
    assert (counters.requests, counters.rate_limited) == (2, 1)


async def test_a_request_over_the_token_window_is_request_too_large(
    emu: RunningEmulator, keystore: Keystore
) -> None:
    secret = openai_key("big")
    emu.admin.set_limits([LimitRule(key=secret, tokens=20, window_s=60)])
    with leased(keystore, "openai", secret) as lease:
        signal = await executor(emu).run_turn(
            lease, prompt="a long question " * 20, model=None, checkpoint=None
        )
    assert isinstance(signal, RateLimitSignal)
    assert (signal.kind, signal.resets_at, signal.retryable) == ("request_too_large", None, False)
    assert emu.admin.key(api_key=secret).requests == 1


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("overloaded", ("overloaded", None, True)),
        ("insufficient_quota", ("quota_exhausted", None, False)),
        ("request_too_large", ("request_too_large", None, False)),
        ("junk_headers", ("rate_limit", None, True)),
        ("missing_headers", ("rate_limit", None, True)),
    ],
)
async def test_each_scripted_fault_is_returned_as_its_signal(
    emu: RunningEmulator, keystore: Keystore, fault: str, expected: tuple[str, object, bool]
) -> None:
    secret = openai_key("fault")
    emu.admin.set_faults([FaultRule(kind=fault, key=secret, times=1)])
    with leased(keystore, "openai", secret) as lease:
        signal = await executor(emu).run_turn(lease, prompt="hi", model=None, checkpoint=None)
    assert isinstance(signal, RateLimitSignal)
    assert (signal.kind, signal.resets_at, signal.retryable) == expected
    counters = emu.admin.key(api_key=secret)
    assert (counters.requests, counters.faults) == (1, {fault: 1})  # insufficient_quota: no retry


async def test_a_rejected_key_raises_key_rejected_without_the_secret(
    emu: RunningEmulator, keystore: Keystore
) -> None:
    secret = "sk-revoked-" + openai_key("x").removeprefix("sk-proj-")
    with leased(keystore, "openai", secret) as lease, pytest.raises(KeyRejected) as caught:
        await executor(emu).run_turn(lease, prompt="hi", model=None, checkpoint=None)
    error = caught.value
    assert (error.status, error.agent) == (401, "openai")
    assert "Incorrect API key provided" in str(error)  # the provider's words, masked key only
    assert secret not in str(error) and error.__context__ is None
    assert emu.admin.key(api_key=secret).requests == 1


async def test_the_base_url_comes_from_openai_base_url_when_not_given(
    emu: RunningEmulator, keystore: Keystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", emu.openai_base_url)
    with leased(keystore, "openai", openai_key("env")) as lease:
        result = await OpenAIExecutor().run_turn(lease, prompt="hi", model=None, checkpoint=None)
    assert isinstance(result, TurnResult) and len(emu.admin.log()) == 1
