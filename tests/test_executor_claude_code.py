"""The claude-code executor driving the REAL `claude` CLI against the emulator, with real leases:
a turn, a 429 per credential kind, and a conversation that moves to another key and another
working directory (another machine) through its checkpoint.

Needs the CLI (installed on first use by flows.executors.claude_bin) and fails, never skips,
when it cannot be had.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api.emulator import (
    EmulatorConfig,
    KeyMatch,
    LimitRule,
    RunningEmulator,
    conversation_digest,
    fingerprint,
    serve_emulator,
)
from flows.executors.base import TurnResult
from flows.executors.claude_bin import ClaudeBinaryUnavailable, ensure_claude_bin
from flows.executors.claude_code import ClaudeCodeExecutor
from flows.executors.errors import KeyRejected
from flows.executors.transcript import project_key
from keystore import Keystore, RateLimitSignal
from tests.executors.helpers import api_key, leased, oauth_token

pytest_plugins = ["tests.emulator.fixtures", "tests.executors.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture(scope="module")
def claude_bin() -> Path:
    try:
        return ensure_claude_bin()
    except ClaudeBinaryUnavailable as exc:
        pytest.fail(f"the real claude CLI is required (CI installs it) and is missing: {exc}")


@pytest.fixture(scope="module")
def live_emulator() -> Iterator[RunningEmulator]:
    # System clock: the CLI compares resets with real time. Unlisted keys get a 401.
    accepted = [KeyMatch(key_prefix="sk-ant-api03-"), KeyMatch(key_prefix="sk-ant-oat01-")]
    with serve_emulator(EmulatorConfig(accepted_keys=accepted)) as running:
        yield running


@pytest.fixture
def emu(live_emulator: RunningEmulator) -> RunningEmulator:
    live_emulator.admin.reset(restore_config=True)
    return live_emulator


def executor(
    claude_bin: Path, emu: RunningEmulator, workdir: Path | None = None
) -> ClaudeCodeExecutor:
    return ClaudeCodeExecutor(claude_bin=claude_bin, base_url=emu.base_url, workdir=workdir)


def reply(prior: list[tuple[str, str]], turn: int, prompt: str) -> str:
    return f"reply to {conversation_digest(prior)}: turn {turn}; last user text: {prompt}"


def turn_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("keyrelay-claude-turn-*"))


async def test_a_turn_completes_with_a_resumable_checkpoint(
    claude_bin: Path, emu: RunningEmulator, keystore: Keystore, tmp_path: Path
) -> None:
    secret = api_key("turn")
    before = turn_dirs()
    with leased(keystore, "claude-code", secret) as lease:
        result = await executor(claude_bin, emu, tmp_path).run_turn(
            lease, prompt="hello emulator", model=None, checkpoint=None
        )
    assert isinstance(result, TurnResult)
    assert result.text == reply([], 1, "hello emulator")
    checkpoint = result.checkpoint
    assert set(checkpoint) == {"session_id", "transcript", "cwd_key"}
    assert checkpoint["cwd_key"] == project_key(tmp_path.resolve())
    lines = [json.loads(line) for line in checkpoint["transcript"].splitlines()]
    assert {line.get("sessionId") for line in lines} >= {checkpoint["session_id"]}
    json.dumps(checkpoint)
    assert result.utilization is None  # API keys get no rate_limit_event
    assert result.usage["input_tokens"] > 0 and result.usage["output_tokens"] > 0
    (entry,) = emu.admin.log()
    assert (entry.auth, entry.key_fingerprint, entry.status) == (
        "x-api-key",
        fingerprint(secret),
        200,
    )
    assert turn_dirs() == before  # the turn's HOME / config dir is gone


async def test_an_api_key_429_is_a_rate_limit_signal_after_one_call(
    claude_bin: Path, emu: RunningEmulator, keystore: Keystore
) -> None:
    secret = api_key("limited")
    emu.admin.set_limits([LimitRule(key=secret, requests=1, window_s=60)])
    with leased(keystore, "claude-code", secret) as lease:
        ex = executor(claude_bin, emu)
        first = await ex.run_turn(lease, prompt="hi", model=None, checkpoint=None)
        assert isinstance(first, TurnResult)
        signal = await ex.run_turn(lease, prompt="again", model=None, checkpoint=first.checkpoint)
    # The CLI reports an API-key 429 only as "API Error: Request rejected (429)": no reset time
    # (the flow then cools the key for `no_reset_cooldown_s`).
    assert signal == RateLimitSignal(
        kind="rate_limit", resets_at=None, retryable=True, source="result"
    )
    counters = emu.admin.key(api_key=secret)
    assert (counters.requests, counters.rate_limited) == (2, 1)  # the CLI did not retry


async def test_an_oauth_usage_limit_is_a_usage_limit_signal_with_the_events_reset(
    claude_bin: Path, emu: RunningEmulator, keystore: Keystore
) -> None:
    token = oauth_token("limited")
    emu.admin.set_limits([LimitRule(key=token, requests=1, window_s=60)])
    with leased(keystore, "claude-code", token) as lease:
        ex = executor(claude_bin, emu)
        first = await ex.run_turn(lease, prompt="hi", model=None, checkpoint=None)
        signal = await ex.run_turn(lease, prompt="hi", model=None, checkpoint=None)
    assert isinstance(first, TurnResult)
    assert first.utilization == pytest.approx(1.0)  # 1 of 1 request, from the rate_limit_event
    window_start = emu.admin.log()[0].at  # the fixed window opened with the first request
    assert isinstance(signal, RateLimitSignal)
    assert (signal.kind, signal.retryable, signal.source) == (
        "usage_limit",
        True,
        "rate_limit_event.resetsAt",
    )
    assert signal.resets_at == datetime.fromtimestamp(math.ceil(window_start + 60), UTC)
    assert [e.credential_kind for e in emu.admin.log()] == ["oauth", "oauth"]
    assert emu.admin.key(api_key=token).rate_limited == 1


async def test_a_conversation_moves_to_another_key_and_machine_through_its_checkpoint(
    claude_bin: Path, emu: RunningEmulator, keystore: Keystore, tmp_path: Path
) -> None:
    key_a, key_b = api_key("machine-a"), api_key("machine-b")
    machine_a, machine_b = tmp_path / "a" / "work", tmp_path / "b" / "other.checkout"
    machine_a.mkdir(parents=True)
    machine_b.mkdir(parents=True)
    emu.admin.set_limits([LimitRule(key=key_a, requests=1, window_s=60)])
    said: list[tuple[str, str]] = []
    with leased(keystore, "claude-code", key_a) as lease_a:
        turn1 = await executor(claude_bin, emu, machine_a).run_turn(
            lease_a, prompt="first about apples", model=None, checkpoint=None
        )
        assert isinstance(turn1, TurnResult)
        said += [("user", "first about apples"), ("assistant", turn1.text)]
        # Turn 2 hits A's limit; the CLI may have appended to its transcript, but that died
        # with the turn's config dir.
        limited = await executor(claude_bin, emu, machine_a).run_turn(
            lease_a, prompt="second about pears", model=None, checkpoint=turn1.checkpoint
        )
        assert isinstance(limited, RateLimitSignal) and limited.kind == "rate_limit"
    with leased(keystore, "claude-code", key_b) as lease_b:
        turn2 = await executor(claude_bin, emu, machine_b).run_turn(
            lease_b, prompt="second about pears", model=None, checkpoint=turn1.checkpoint
        )
        assert isinstance(turn2, TurnResult)
        assert turn2.text == reply(said, 2, "second about pears")
        last = emu.admin.log()[-1]
        # The retried prompt was sent once: two user turns, the first one's digest.
        assert (last.user_turns, last.prior_digest, last.key_fingerprint) == (
            2,
            conversation_digest(said),
            fingerprint(key_b),
        )
        said += [("user", "second about pears"), ("assistant", turn2.text)]
        assert turn2.checkpoint["session_id"] == turn1.checkpoint["session_id"]
        assert turn2.checkpoint["cwd_key"] == project_key(machine_b.resolve())
        turn3 = await executor(claude_bin, emu, machine_a).run_turn(
            lease_b,
            prompt="third about plums",
            model="claude-haiku-5-5",
            checkpoint=turn2.checkpoint,
        )
    assert isinstance(turn3, TurnResult)
    assert turn3.text == reply(said, 3, "third about plums")
    last = emu.admin.log()[-1]
    assert (last.user_turns, last.model) == (3, "claude-haiku-5-5")
    assert [e.status for e in emu.admin.log()] == [200, 429, 200, 200]  # one call per turn


async def test_a_rejected_key_raises_key_rejected(
    claude_bin: Path, emu: RunningEmulator, keystore: Keystore
) -> None:
    secret = "sk-ant-revoked-" + api_key("x").removeprefix("sk-ant-api03-")
    with leased(keystore, "claude-code", secret) as lease:
        with pytest.raises(KeyRejected) as caught:
            await executor(claude_bin, emu).run_turn(
                lease, prompt="hi", model=None, checkpoint=None
            )
        key_id = lease.key_id
    error = caught.value
    assert (error.status, error.key_id, error.agent) == (401, key_id, "claude-code")
    assert "Invalid API key" in str(error) and secret not in str(error)
    assert emu.admin.key(api_key=secret).requests == 1
