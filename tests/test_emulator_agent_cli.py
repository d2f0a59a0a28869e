"""The REAL `claude` CLI running the emulator's agent scripts: tool loops that run real commands,
a 429 in the middle of one, a resume on another key, and a CLI killed in the middle of a tool.

These re-check the facts of CLAUDE_CLI_NOTES.md, "Tool use". They need the CLI and fail, never
skip, without it (CI installs it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from api.emulator import (
    AgentScript,
    FaultRule,
    LimitRule,
    RunningEmulator,
    ToolStep,
    fingerprint,
)
from tests.emulator.claude_cli import (
    claude_env,
    conversation,
    copy_transcript,
    run_claude,
    start_claude,
    transcript_path,
)

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.emulator.fixtures"]

KEY_A = "sk-ant-api03-agent-cli-key-a-0123456789abcdefgh"
KEY_B = "sk-ant-api03-agent-cli-key-b-0123456789abcdefgh"
THREE_STEPS = AgentScript.appending_steps(3, file_name="log.txt")
# Headless as root: `--allowedTools Bash` approves the Bash tool (`--permission-mode acceptEdits`
# also lets `echo ... >> file` in the working directory through); without either, every call is
# denied and answered with an `is_error` tool_result.
ALLOW_BASH = ("--allowedTools", "Bash")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def key(secret: str) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": secret}


def test_three_bash_steps_run_in_order_and_the_turn_succeeds(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    live_emu.admin.set_agent(THREE_STEPS)
    turn = run_claude(
        claude_bin,
        live_emu,
        "go",
        *ALLOW_BASH,
        home=tmp_path / "h",
        cwd=workdir,
        credential=key(KEY_A),
    )
    assert turn.returncode == 0, turn.stderr
    assert (workdir / "log.txt").read_text() == "step1\nstep2\nstep3\n"
    result = turn.result
    assert (result["subtype"], result["is_error"], result["result"]) == (
        "success",
        False,
        "Done: 3 tool steps.",
    )
    assert result["num_turns"] == 4 and result["permission_denials"] == []
    log = live_emu.admin.log()
    assert [(e.tool_results, e.tool_errors, e.tool_step) for e in log] == [
        (0, 0, 1),
        (1, 0, 2),
        (2, 0, 3),
        (3, 0, None),
    ]
    assert all(e.status == 200 and e.stream for e in log)
    # The transcript: each content block is its own entry; a result points at its call.
    entries = conversation(transcript_path(tmp_path / "h", result["session_id"]))
    calls = {
        e["uuid"]: e["message"]["content"][0]["id"]
        for e in entries
        if e["type"] == "assistant" and e["message"]["content"][0]["type"] == "tool_use"
    }
    results = [e for e in entries if e["type"] == "user" and "sourceToolAssistantUUID" in e]
    assert len(calls) == len(results) == 3
    for entry in results:
        (block,) = entry["message"]["content"]
        assert entry["parentUuid"] == entry["sourceToolAssistantUUID"]
        assert block["tool_use_id"] == calls[entry["parentUuid"]]


def test_a_tool_call_in_a_plain_json_reply_runs_too(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    # A stream broken by `event: error` makes the CLI re-send without streaming (see the notes).
    live_emu.admin.set_agent(THREE_STEPS)
    live_emu.admin.set_faults([FaultRule(kind="stream_overloaded", times=1)])
    turn = run_claude(
        claude_bin,
        live_emu,
        "go",
        *ALLOW_BASH,
        home=tmp_path / "h",
        cwd=workdir,
        credential=key(KEY_A),
    )
    assert turn.returncode == 0, turn.stderr
    assert (workdir / "log.txt").read_text() == "step1\nstep2\nstep3\n"
    assert [(e.stream, e.fault, e.tool_step) for e in live_emu.admin.log()] == [
        (True, "stream_overloaded", None),
        (False, None, 1),
        (True, None, 2),
        (True, None, 3),
        (True, None, None),
    ]


def test_a_write_step_creates_the_file(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    target = workdir / "notes.txt"  # the CLI's Write tool wants an absolute path
    live_emu.admin.set_agent(
        AgentScript(steps=[ToolStep.write(str(target), "written by {step}\n")])
    )
    turn = run_claude(
        claude_bin,
        live_emu,
        "write",
        "--permission-mode",
        "acceptEdits",
        home=tmp_path / "h",
        cwd=workdir,
        credential=key(KEY_A),
    )
    assert turn.returncode == 0, turn.stderr
    assert target.read_text() == "written by 1\n"
    assert turn.result["is_error"] is False
    assert [(e.tool_results, e.tool_errors) for e in live_emu.admin.log()] == [(0, 0), (1, 0)]


def test_a_429_mid_loop_ends_the_turn_and_another_key_resumes_the_loop(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    live_emu.admin.set_agent(THREE_STEPS)
    live_emu.admin.set_limits([LimitRule(key=KEY_A, requests=2, window_s=600)])
    first = run_claude(
        claude_bin,
        live_emu,
        "go",
        *ALLOW_BASH,
        home=tmp_path / "a",
        cwd=workdir,
        credential=key(KEY_A),
    )
    assert first.returncode == 1
    result = first.result
    assert (result["is_error"], result["api_error_status"], result["terminal_reason"]) == (
        True,
        429,
        "api_error",
    )
    assert (workdir / "log.txt").read_text() == "step1\nstep2\n"
    on_a = live_emu.admin.log()
    assert [(e.status, e.tool_results) for e in on_a] == [(200, 0), (200, 1), (429, 2)]
    transcript = transcript_path(tmp_path / "a", result["session_id"])
    last = conversation(transcript)[-1]
    assert last["isApiErrorMessage"] is True and last["error"] == "rate_limit"
    assert last["message"]["model"] == "<synthetic>"

    copy_transcript(transcript, cwd=workdir, home=tmp_path / "b")
    second = run_claude(
        claude_bin,
        live_emu,
        "--resume",
        result["session_id"],
        "continue",
        *ALLOW_BASH,
        home=tmp_path / "b",
        cwd=workdir,
        credential=key(KEY_B),
    )
    assert second.returncode == 0, second.stderr
    assert second.result["result"] == "Done: 3 tool steps."
    assert (workdir / "log.txt").read_text() == "step1\nstep2\nstep3\n"
    resumed = live_emu.admin.log()[3]
    assert resumed.key_fingerprint == fingerprint(KEY_B)
    # Key B's first request carried the two results produced under key A, and the new prompt.
    assert resumed.tool_result_ids == [e.tool_use_id for e in on_a[:2]]
    assert (resumed.tool_step, resumed.user_turns, resumed.last_user_text) == (3, 2, "continue")


def has_call(home: Path, *, step: int) -> bool:
    """Whether the (only) transcript under `home` holds the tool_use of step `step` yet."""
    for transcript in (home / ".claude" / "projects").glob("*/*.jsonl"):
        try:
            entries = conversation(transcript)
        except ValueError:  # a line still being written
            return False
        for entry in entries:
            content = entry["message"]["content"]
            if isinstance(content, list) and any(
                b.get("type") == "tool_use" and b.get("id", "").endswith(f"_{step}")
                for b in content
            ):
                return True
    return False


def test_a_cli_killed_mid_tool_leaves_a_dangling_call_that_resume_repairs(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    # `sleep 30` followed by more is refused by the CLI itself; `tail -f` under `timeout` is not.
    # --foreground keeps timeout in the shell's process group, so one killpg ends them all.
    slow = "echo $$ > tool.pid; timeout --foreground 60 tail -f /dev/null; echo slept >> log.txt"
    live_emu.admin.set_agent(
        AgentScript(
            steps=[
                ToolStep.bash("echo before >> log.txt"),
                ToolStep.bash(slow, description="Wait"),
                ToolStep.bash("echo after >> log.txt"),
            ]
        )
    )
    cli = start_claude(
        claude_bin,
        live_emu,
        "go",
        *ALLOW_BASH,
        home=tmp_path / "a",
        cwd=workdir,
        credential=key(KEY_A),
    )
    pid_file = workdir / "tool.pid"
    try:
        # The transcript lags the tools by a few ms: kill once it holds step 2's call.
        deadline = time.monotonic() + 60
        while not has_call(tmp_path / "a", step=2):
            assert cli.poll() is None and time.monotonic() < deadline, "step 2 never started"
            time.sleep(0.05)
        assert pid_file.exists()  # the tool is running
        cli.send_signal(signal.SIGKILL)
        assert cli.wait(timeout=10) == -signal.SIGKILL
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        # The Bash tool's shell leads its own session: killing the CLI does not end it.
        if pid_file.exists() and pid_file.read_text().strip():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pytest.fail("the tool's shell died with the CLI (the notes say it survives)")
    (session,) = (tmp_path / "a" / ".claude" / "projects").glob("*/*.jsonl")
    entries = conversation(session)
    last = entries[-1]
    assert last["type"] == "assistant"
    (dangling,) = last["message"]["content"]
    assert dangling["type"] == "tool_use" and dangling["input"]["command"] == slow
    assert not [e for e in entries if e.get("sourceToolAssistantUUID") == last["uuid"]]

    copy_transcript(session, cwd=workdir, home=tmp_path / "b")
    resumed = run_claude(
        claude_bin,
        live_emu,
        "--resume",
        session.stem,
        "continue",
        *ALLOW_BASH,
        home=tmp_path / "b",
        cwd=workdir,
        credential=key(KEY_B),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (workdir / "log.txt").read_text() == "before\nafter\n"
    first_on_b = next(e for e in live_emu.admin.log() if e.key_fingerprint == fingerprint(KEY_B))
    assert first_on_b.tool_result_ids[-1] == dangling["id"] and first_on_b.tool_errors == 1
    repaired = conversation(transcript_path(tmp_path / "b", session.stem))
    (interrupted,) = [e for e in repaired if e.get("sourceToolAssistantUUID") == last["uuid"]]
    assert interrupted["toolDenialKind"] == "interrupted"
    (block,) = interrupted["message"]["content"]
    assert block["is_error"] is True and block["tool_use_id"] == dangling["id"]
    assert block["content"].startswith("[Tool call interrupted")
    filler = repaired[repaired.index(interrupted) + 1]
    assert filler["message"]["model"] == "<synthetic>"
    assert filler["message"]["content"] == [{"type": "text", "text": "No response requested."}]


def test_resume_without_a_prompt_is_refused_before_any_call(
    claude_bin: Path, live_emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    live_emu.admin.set_agent(THREE_STEPS)
    first = run_claude(
        claude_bin,
        live_emu,
        "go",
        *ALLOW_BASH,
        home=tmp_path / "a",
        cwd=workdir,
        credential=key(KEY_A),
    )
    calls = len(live_emu.admin.log())
    done = subprocess.run(
        [str(claude_bin), "-p", "--resume", first.result["session_id"], "--output-format", "json"],
        env=claude_env(live_emu, home=tmp_path / "a", credential=key(KEY_A)),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Provide a prompt to continue the conversation" in done.stdout + done.stderr
    assert len(live_emu.admin.log()) == calls
