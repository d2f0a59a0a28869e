"""The REAL `claude` CLI against the emulator: a turn, a 429 per credential kind, a resume on
another key in a fresh config dir, and the CLI's own fallback after a broken stream.

These need the CLI (installed on first use by flows.executors.claude_bin, ~400 MB from npm) and
fail, never skip, when it cannot be had: CI installs it.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest

from api.emulator import FaultRule, LimitRule, RunningEmulator, conversation_digest, fingerprint
from tests.emulator.claude_cli import run_claude

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.emulator.fixtures"]

API_KEY = "sk-ant-api03-cli-test-key-0123456789abcdefghij"
OTHER_KEY = "sk-ant-api03-cli-other-key-0123456789abcdefghi"
OAUTH = "sk-ant-oat01-cli-test-token-0123456789abcdefghi"


@pytest.fixture
def emu(live_emu: RunningEmulator) -> RunningEmulator:
    return live_emu  # the CLI compares resets with real time


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_a_turn_completes_with_the_emulators_reply(
    claude_bin: Path, emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    turn = run_claude(
        claude_bin,
        emu,
        "hello emulator",
        home=tmp_path / "h",
        cwd=workdir,
        credential={"ANTHROPIC_API_KEY": API_KEY},
    )
    expected = f"reply to {conversation_digest([])}: turn 1; last user text: hello emulator"
    assert turn.returncode == 0, turn.stderr
    (init,) = [e for e in turn.of_type("system") if e.get("subtype") == "init"]
    assert init["apiKeySource"] == "ANTHROPIC_API_KEY" and init["session_id"]
    assert turn.of_type("assistant")[0]["message"]["content"][0]["text"] == expected
    result = turn.result
    assert (result["is_error"], result["result"], result["api_error_status"]) == (
        False,
        expected,
        None,
    )
    assert result["session_id"] == init["session_id"]
    (entry,) = emu.admin.log()
    assert (entry.path, entry.auth, entry.stream, entry.status) == (
        "/v1/messages",
        "x-api-key",
        True,
        200,
    )
    assert entry.key_fingerprint == fingerprint(API_KEY)


def test_an_api_key_429_ends_the_turn_with_api_error_status_429(
    claude_bin: Path, emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    emu.admin.set_limits([LimitRule(key=API_KEY, requests=1, window_s=60)])
    turns = [
        run_claude(
            claude_bin,
            emu,
            "hi",
            home=tmp_path / "h",
            cwd=workdir,
            credential={"ANTHROPIC_API_KEY": API_KEY},
        )
        for _ in range(2)
    ]
    assert turns[0].returncode == 0 and turns[1].returncode == 1
    result = turns[1].result
    assert result["is_error"] is True and result["api_error_status"] == 429
    assert result["api_error_type"] == "rate_limit_error"
    assert result["result"].startswith("API Error: Request rejected (429) · ")
    assert turns[1].of_type("rate_limit_event") == []  # API keys: no event, only the result
    assert emu.admin.key(api_key=API_KEY).rate_limited == 1  # no retry behind our back


def test_an_oauth_usage_limit_is_reported_as_a_hit_with_its_reset(
    claude_bin: Path, emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    emu.admin.set_limits([LimitRule(key_prefix="sk-ant-oat01-", requests=1, window_s=60)])
    credential = {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH}
    first = run_claude(
        claude_bin, emu, "hi", home=tmp_path / "h", cwd=workdir, credential=credential
    )
    second = run_claude(
        claude_bin, emu, "hi", home=tmp_path / "h", cwd=workdir, credential=credential
    )
    assert first.returncode == 0, first.stderr
    (allowed,) = first.of_type("rate_limit_event")
    assert allowed["rate_limit_info"]["unifiedWindows"]["five_hour"]["status"] == "allowed_warning"
    assert second.returncode == 1
    (event,) = second.of_type("rate_limit_event")
    info = event["rate_limit_info"]
    window_start = emu.admin.log()[0].at  # the fixed window opened at the first request
    assert info["status"] == "rejected" and info["rateLimitType"] == "five_hour"
    assert info["resetsAt"] == math.ceil(window_start + 60)
    result = second.result
    assert result["api_error_status"] == 429 and result["is_error"] is True
    assert result["api_error"] == "usage_limit_reached"
    assert re.match(r"You've hit your .*limit · resets ", result["result"])
    assert emu.admin.log()[-1].credential_kind == "oauth"


def test_a_copied_transcript_resumes_on_another_key_in_a_fresh_config_dir(
    claude_bin: Path, emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    first = run_claude(
        claude_bin,
        emu,
        "first question about apples",
        home=tmp_path / "a",
        cwd=workdir,
        credential={"ANTHROPIC_API_KEY": API_KEY},
    )
    assert first.returncode == 0, first.stderr
    session_id, first_reply = first.result["session_id"], first.result["result"]
    (transcript,) = (tmp_path / "a" / ".claude" / "projects").glob(f"*/{session_id}.jsonl")
    assert transcript.parent.name == re.sub(r"[^A-Za-z0-9]", "-", str(workdir))
    fresh = tmp_path / "b" / ".claude" / "projects" / transcript.parent.name
    fresh.mkdir(parents=True)
    shutil.copy(transcript, fresh / transcript.name)

    second = run_claude(
        claude_bin,
        emu,
        "--resume",
        session_id,
        "second question about pears",
        home=tmp_path / "b",
        cwd=workdir,
        credential={"ANTHROPIC_API_KEY": OTHER_KEY},
    )
    assert second.returncode == 0, second.stderr
    digest = conversation_digest(
        [("user", "first question about apples"), ("assistant", first_reply)]
    )
    assert (
        second.result["result"]
        == f"reply to {digest}: turn 2; last user text: second question about pears"
    )
    assert second.result["session_id"] == session_id
    entry = emu.admin.log()[-1]
    assert (entry.user_turns, entry.prior_digest) == (2, digest)
    assert entry.key_fingerprint == fingerprint(OTHER_KEY)


def test_a_stream_broken_by_overload_is_retried_once_without_streaming(
    claude_bin: Path, emu: RunningEmulator, tmp_path: Path, workdir: Path
) -> None:
    # Even with CLAUDE_CODE_MAX_RETRIES=0 the CLI falls back to a non-streaming request after
    # an `event: error` mid-stream: one turn can cost two provider calls.
    emu.admin.set_faults([FaultRule(kind="stream_overloaded", times=1)])
    turn = run_claude(
        claude_bin,
        emu,
        "hi",
        home=tmp_path / "h",
        cwd=workdir,
        credential={"ANTHROPIC_API_KEY": API_KEY},
    )
    assert turn.returncode == 0, turn.stderr
    assert [(e.stream, e.status, e.fault) for e in emu.admin.log()] == [
        (True, 200, "stream_overloaded"),
        (False, 200, None),
    ]
