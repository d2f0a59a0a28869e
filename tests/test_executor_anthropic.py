"""The `anthropic` executor against the emulator over real sockets, with real keystore leases.

Every test also checks the emulator's counters: one provider call per turn, no SDK retry.
"""

from __future__ import annotations

import copy
import socket
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
from flows.executors.errors import KeyRejected, ProviderTimeout, ProviderUnavailable
from keystore import InvalidInput, Keystore, RateLimitSignal, mask
from tests.executors.helpers import T0, api_key, leased

pytest_plugins = ["tests.emulator.fixtures", "tests.executors.fixtures"]
pytestmark = pytest.mark.anyio
ACCEPTED = "sk-ant-api03-"


@pytest.fixture(scope="module")
def emulator(emulator_clock: ManualClock) -> Iterator[RunningEmulator]:
    # Keys outside ACCEPTED get a 401, as a revoked key would.
    config = EmulatorConfig(accepted_keys=[KeyMatch(key_prefix=ACCEPTED)])
    with serve_emulator(config, clock=emulator_clock) as running:
        yield running


def executor(emu: RunningEmulator, **options: Any) -> AnthropicExecutor:
    # The executor's clock stands still at the emulator's: resets come out exact.
    return AnthropicExecutor(base_url=emu.base_url, clock=lambda: T0, **options)


def reply(prior: list[tuple[str, str]], turn: int, prompt: str) -> str:
    return f"reply to {conversation_digest(prior)}: turn {turn}; last user text: {prompt}"


async def test_a_conversation_carries_every_earlier_turn(
    emu: RunningEmulator, keystore: Keystore
) -> None:
    secret = api_key("conv")
    said: list[tuple[str, str]] = []
    checkpoint: dict[str, Any] | None = None
    with leased(keystore, "anthropic", secret) as lease:
        for turn, prompt in enumerate(["apples?", "pears?", "plums?"], start=1):
            given = copy.deepcopy(checkpoint)
            result = await executor(emu).run_turn(
                lease, prompt=prompt, model=None, checkpoint=checkpoint
            )
            assert isinstance(result, TurnResult)
            assert result.text == reply(said, turn, prompt)
            assert checkpoint == given  # the turn did not change what it was given
            said += [("user", prompt), ("assistant", result.text)]
            assert result.checkpoint == {"messages": [{"role": r, "content": t} for r, t in said]}
            assert result.usage["input_tokens"] > 0 and result.usage["output_tokens"] > 0
            assert result.utilization is None  # no limit configured: no rate-limit headers
            checkpoint = result.checkpoint
    log = emu.admin.log()
    assert [(e.user_turns, e.model, e.stream) for e in log] == [
        (1, "claude-sonnet-5-5", False),
        (2, "claude-sonnet-5-5", False),
        (3, "claude-sonnet-5-5", False),
    ]
    counters = emu.admin.key(api_key=secret)
    assert (counters.requests, counters.served, counters.rate_limited) == (3, 3, 0)


async def test_model_and_streaming_are_honoured(emu: RunningEmulator, keystore: Keystore) -> None:
    with leased(keystore, "anthropic", api_key("stream")) as lease:
        result = await executor(emu, stream=True).run_turn(
            lease, prompt="hi", model="claude-opus-5-5", checkpoint=None
        )
    assert isinstance(result, TurnResult) and result.text == reply([], 1, "hi")
    (entry,) = emu.admin.log()
    assert (entry.model, entry.stream, entry.status) == ("claude-opus-5-5", True, 200)


async def test_utilization_on_success_comes_from_the_headers(
    emu: RunningEmulator, keystore: Keystore
) -> None:
    secret = api_key("util")
    emu.admin.set_limits([LimitRule(key=secret, requests=4, window_s=60)])
    with leased(keystore, "anthropic", secret) as lease:
        result = await executor(emu).run_turn(lease, prompt="hi", model=None, checkpoint=None)
    assert isinstance(result, TurnResult)
    assert result.utilization == pytest.approx(0.25)  # 1 of 4 requests used


async def test_a_429_is_returned_as_a_signal_and_a_retry_from_the_checkpoint_sends_the_prompt_once(
    emu: RunningEmulator, keystore: Keystore
) -> None:
    first, second = api_key("limited"), api_key("spare")
    emu.admin.set_limits([LimitRule(key=first, requests=1, window_s=60)])
    with leased(keystore, "anthropic", first) as lease_a:
        turn1 = await executor(emu).run_turn(lease_a, prompt="one", model=None, checkpoint=None)
        assert isinstance(turn1, TurnResult)
        limited = await executor(emu).run_turn(
            lease_a, prompt="two", model=None, checkpoint=turn1.checkpoint
        )
        with leased(keystore, "anthropic", second) as lease_b:
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
    assert emu.admin.log()[-1].user_turns == 2  # "two" once, not twice
    counters = emu.admin.key(api_key=first)
    assert (counters.requests, counters.rate_limited) == (2, 1)  # no hidden SDK retry


@pytest.mark.parametrize(
    ("fault", "stream", "expected"),
    [
        ("overloaded", False, ("overloaded", None, True)),
        ("stream_overloaded", True, ("overloaded", None, True)),
        # The spend cap lifts on the first of next month (RATE_LIMITS.md A5).
        ("spend_limit", False, ("quota_exhausted", T0.replace(month=2), False)),
        ("request_too_large", False, ("request_too_large", None, False)),
        ("junk_headers", False, ("rate_limit", None, True)),
        ("missing_headers", False, ("rate_limit", None, True)),
    ],
)
async def test_each_scripted_fault_is_returned_as_its_signal(
    emu: RunningEmulator,
    keystore: Keystore,
    fault: str,
    stream: bool,
    expected: tuple[str, object, bool],
) -> None:
    secret = api_key("fault")
    emu.admin.set_faults([FaultRule(kind=fault, key=secret, times=1)])
    with leased(keystore, "anthropic", secret) as lease:
        signal = await executor(emu, stream=stream).run_turn(
            lease, prompt="hi", model=None, checkpoint=None
        )
    assert isinstance(signal, RateLimitSignal)
    assert (signal.kind, signal.resets_at, signal.retryable) == expected
    counters = emu.admin.key(api_key=secret)
    assert (counters.requests, counters.faults) == (1, {fault: 1})


async def test_a_rejected_key_raises_key_rejected_without_the_secret(
    emu: RunningEmulator, keystore: Keystore
) -> None:
    secret = "sk-ant-revoked-" + api_key("x").removeprefix(ACCEPTED)
    with leased(keystore, "anthropic", secret) as lease:
        with pytest.raises(KeyRejected) as caught:
            await executor(emu).run_turn(lease, prompt="hi", model=None, checkpoint=None)
        key_id = lease.key_id
    error = caught.value
    assert (error.status, error.key_id, error.agent) == (401, key_id, "anthropic")
    assert "HTTP 401 authentication_error" in str(error)
    assert secret not in str(error) and secret not in repr(error)
    # Raised outside the SDK's `except`: its request (with the key header) is not reachable.
    assert error.__cause__ is None and error.__context__ is None
    assert emu.admin.key(api_key=secret).requests == 1


async def test_an_unreachable_provider_raises_provider_unavailable(keystore: Keystore) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    secret = api_key("down")
    ex = AnthropicExecutor(base_url=f"http://127.0.0.1:{port}")
    with (
        leased(keystore, "anthropic", secret) as lease,
        pytest.raises(ProviderUnavailable) as caught,
    ):
        await ex.run_turn(lease, prompt="hi", model=None, checkpoint=None)
    assert type(caught.value) is ProviderUnavailable and secret not in str(caught.value)


async def test_a_provider_that_never_answers_raises_provider_timeout(keystore: Keystore) -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        ex = AnthropicExecutor(
            base_url=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.3
        )
        lease_cm = leased(keystore, "anthropic", api_key("slow"))
        with lease_cm as lease, pytest.raises(ProviderTimeout, match="timed out"):
            await ex.run_turn(lease, prompt="hi", model=None, checkpoint=None)


async def test_the_base_url_comes_from_anthropic_base_url_when_not_given(
    emu: RunningEmulator, keystore: Keystore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emu.base_url)
    with leased(keystore, "anthropic", api_key("env")) as lease:
        result = await AnthropicExecutor().run_turn(lease, prompt="hi", model=None, checkpoint=None)
    assert isinstance(result, TurnResult) and len(emu.admin.log()) == 1


@pytest.mark.parametrize(
    "checkpoint",
    [
        {"messages": "hi"},
        {"messages": [{"role": "system", "content": "x"}]},
        {"messages": [{"role": "user"}]},
        {"nothing": []},
    ],
)
async def test_a_malformed_checkpoint_is_refused_before_any_call(
    emu: RunningEmulator, keystore: Keystore, checkpoint: dict[str, Any]
) -> None:
    lease_cm = leased(keystore, "anthropic", api_key("bad"))
    with lease_cm as lease, pytest.raises(InvalidInput, match="checkpoint"):
        await executor(emu).run_turn(lease, prompt="hi", model=None, checkpoint=checkpoint)
    assert emu.admin.log() == []


async def test_a_reply_echoing_the_secret_is_redacted(
    emu: RunningEmulator, keystore: Keystore
) -> None:
    # The emulator echoes the start of the last user text: a prompt holding the key makes the
    # reply hold it too, which is what a misbehaving model or gateway could do.
    secret = "sk-ant-api03-e" + "0123456789"
    with leased(keystore, "anthropic", secret) as lease:
        result = await executor(emu).run_turn(
            lease, prompt=f"{secret} echo", model=None, checkpoint=None
        )
    assert isinstance(result, TurnResult)
    assert secret not in result.text and mask(secret) in result.text
    assert secret not in repr(result.checkpoint)
