"""Mid-turn resume with the REAL `claude` CLI: a turn of tool calls cut off part-way (by a 429,
or by killing the CLI in the middle of a tool) keeps what it got done, and the next attempt, on
another key, resumes that session: no completed tool call runs again.

The emulator plays the agent (AgentScript): each reply asks for the next tool step, decided by
how many tool results the conversation already holds.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.emulator import (
    AgentScript,
    EmulatorConfig,
    KeyMatch,
    LimitRule,
    RunningEmulator,
    ToolStep,
    fingerprint,
    serve_emulator,
)
from flows.continuation import continuation_prompt
from flows.executors.base import TurnResult
from flows.executors.claude_bin import ensure_claude_bin
from flows.executors.claude_code import ClaudeCodeExecutor
from flows.executors.errors import ProviderTimeout
from flows.executors.transcript import INTERRUPTED_TOOL
from flows.job import AgentJob
from keystore import Keystore, RateLimitSignal
from tests.executors.helpers import api_key, leased

pytest_plugins = ["tests.executors.fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.anyio]
TASK = "Do the steps."


@pytest.fixture(scope="module")
def claude_bin() -> Path:
    return ensure_claude_bin()


@pytest.fixture(scope="module")
def live_emulator() -> Iterator[RunningEmulator]:
    with serve_emulator(
        EmulatorConfig(accepted_keys=[KeyMatch(key_prefix="sk-ant-api03-")])
    ) as emu:
        yield emu


@pytest.fixture
def emu(live_emulator: RunningEmulator) -> RunningEmulator:
    live_emulator.admin.reset(restore_config=True)
    return live_emulator


def _executor(
    claude_bin: Path, emu: RunningEmulator, workdir: Path, **kw: Any
) -> ClaudeCodeExecutor:
    job = AgentJob(allowed_tools=["Bash"])
    return ClaudeCodeExecutor(
        claude_bin=claude_bin, base_url=emu.base_url, workdir=workdir, job=job, **kw
    )


async def _turn(
    executor: ClaudeCodeExecutor,
    keystore: Keystore,
    secret: str,
    prompt: str,
    checkpoint: dict[str, Any] | None,
) -> tuple[object, list[dict[str, Any]]]:
    kept: list[dict[str, Any]] = []

    async def keep(state: dict[str, Any]) -> None:
        kept.append(state)

    with leased(keystore, "claude-code", secret) as lease:
        try:
            outcome: object = await executor.run_turn(
                lease, prompt=prompt, model=None, checkpoint=checkpoint, keep_partial=keep
            )
        except ProviderTimeout as timed_out:
            outcome = timed_out
    return outcome, kept


async def test_a_turn_cut_off_by_a_429_resumes_on_the_next_key(
    claude_bin: Path, emu: RunningEmulator, keystore: Keystore, tmp_path: Path
) -> None:
    emu.admin.set_agent(AgentScript.appending_steps(4, file_name="log.txt"))
    a, b = api_key("a"), api_key("b")
    emu.admin.set_limits([LimitRule(key=a, requests=2, window_s=600)])
    executor = _executor(claude_bin, emu, tmp_path)

    cut, kept = await _turn(executor, keystore, a, TASK, None)
    assert isinstance(cut, RateLimitSignal)
    assert (tmp_path / "log.txt").read_text() == "step1\nstep2\n"
    (partial,) = kept
    assert partial["interrupted_tools"] == []

    resumed = continuation_prompt(TASK, "the API key hit a rate limit")
    done, kept = await _turn(executor, keystore, b, resumed, partial)
    assert isinstance(done, TurnResult) and kept == []
    assert (tmp_path / "log.txt").read_text() == "step1\nstep2\nstep3\nstep4\n"  # each once
    log = emu.admin.log()
    assert [(e.status, e.tool_results) for e in log] == [
        (200, 0),
        (200, 1),
        (429, 2),
        (200, 2),  # key b's first request carried key a's two tool results
        (200, 3),
        (200, 4),
    ]
    assert [e.key_fingerprint for e in log[3:]] == [fingerprint(b)] * 3
    assert done.checkpoint["session_id"] == partial["session_id"]  # one session throughout


async def test_a_cli_killed_mid_tool_resumes_without_redoing_the_cut_call(
    claude_bin: Path, emu: RunningEmulator, keystore: Keystore, tmp_path: Path
) -> None:
    """Step 2 hangs; the attempt times out and the CLI (and, in the sandbox, the tool) is killed.
    The transcript held step 2's call without its result: the repair answers it as interrupted,
    the resumed agent is told, and goes on with step 3. Step 2 is not run again."""
    hang = "echo step2 >> log.txt; timeout --foreground 120 tail -f /dev/null; echo late >> log.txt"
    emu.admin.set_agent(
        AgentScript(
            steps=[
                ToolStep.bash("echo step1 >> log.txt"),
                ToolStep.bash(hang),
                ToolStep.bash("echo step3 >> log.txt"),
            ]
        )
    )
    killed, kept = await _turn(
        _executor(claude_bin, emu, tmp_path, timeout_s=10), keystore, api_key("a"), TASK, None
    )
    assert isinstance(killed, ProviderTimeout)
    (partial,) = kept
    assert len(partial["interrupted_tools"]) == 1
    assert INTERRUPTED_TOOL in partial["transcript"]
    # nothing of the killed turn survives it (the tool ran in the turn's PID namespace)
    leftover = subprocess.run(
        ["pgrep", "-f", "tail -f /dev/null"], capture_output=True, text=True, check=False
    )
    assert leftover.stdout.strip() == ""

    resumed = continuation_prompt(TASK, "the turn ran out of time", 1)
    done, _ = await _turn(
        _executor(claude_bin, emu, tmp_path), keystore, api_key("b"), resumed, partial
    )
    assert isinstance(done, TurnResult)
    assert (tmp_path / "log.txt").read_text() == "step1\nstep2\nstep3\n"
    resumed_first = emu.admin.log()[2]
    assert (resumed_first.tool_results, resumed_first.tool_errors) == (2, 1)
