"""The claude-code executor's plumbing, fast, with a stand-in CLI (tests/executors/fake_claude.py):
the child's environment, the transcript carried between turns and machines, the process group
killed on timeout and cancellation, and each failure's error class.

The real CLI against the emulator is in test_executor_claude_code.py (slow).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from flows.executors.base import TurnResult
from flows.executors.claude_code import ClaudeCodeExecutor
from flows.executors.errors import AgentFailed, KeyRejected, ProviderTimeout, SessionNotFound
from flows.executors.subprocess_env import INHERITED_VARS, SETTINGS
from flows.executors.transcript import project_key
from keystore import InvalidInput, Keystore, RateLimitSignal, mask
from tests.executors.helpers import T0, api_key, leased, oauth_token

pytest_plugins = ["tests.executors.fixtures"]
pytestmark = pytest.mark.anyio
FAKE = Path(__file__).parent / "executors" / "fake_claude.py"


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    script = tmp_path / "claude"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    script.chmod(0o755)
    return script


@pytest.fixture
def seen_file(tmp_path: Path) -> Path:
    return tmp_path / "seen.json"


def executor(
    fake_bin: Path, seen_file: Path, mode: str = "ok", **options: Any
) -> ClaudeCodeExecutor:
    env = {"FAKE_CLAUDE_MODE": mode, "FAKE_CLAUDE_OUT": str(seen_file)}
    # The fake CLI is a script of this checkout, which the sandbox hides: sandbox.py has its tests.
    return ClaudeCodeExecutor(claude_bin=fake_bin, extra_env=env, sandbox="off", **options)


def seen(seen_file: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(seen_file.read_text())
    return result


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not reaped yet


async def test_the_child_gets_an_allow_listed_environment_and_only_a_placeholder(
    keystore: Keystore, fake_bin: Path, seen_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-decoy-from-the-parent")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-the-child")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://from-the-parent.invalid")
    secret = api_key("env")
    with leased(keystore, "claude-code", secret) as lease:
        result = await executor(fake_bin, seen_file, base_url="http://option.invalid").run_turn(
            lease, prompt="-p looks like a flag", model="claude-opus-5-5", checkpoint=None
        )
    assert isinstance(result, TurnResult)
    child = seen(seen_file)
    env = child["env"]
    # the key stays in the turn's relay: the child gets a placeholder of its kind, and the relay
    placeholder = env["ANTHROPIC_API_KEY"]
    assert placeholder.startswith("sk-ant-api03-keyrelay-") and placeholder != secret
    assert secret not in json.dumps(child) and "CLAUDE_CODE_OAUTH_TOKEN" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env and env["LANG"] == "C.UTF-8"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", env["ANTHROPIC_BASE_URL"])
    assert env["NO_PROXY"] == env["no_proxy"] == "127.0.0.1,localhost"  # straight to the relay
    assert {k: env[k] for k in SETTINGS} == SETTINGS
    home = Path(env["HOME"])
    assert env["CLAUDE_CONFIG_DIR"] == str(home / ".claude")
    assert not home.exists()  # the turn's directory is gone
    expected = set(SETTINGS) | {"PATH", "LANG", "HOME", "CLAUDE_CONFIG_DIR", "TMPDIR"}
    expected |= {"ANTHROPIC_API_KEY", "FAKE_CLAUDE_MODE", "FAKE_CLAUDE_OUT", "NO_PROXY", "no_proxy"}
    expected |= {"ANTHROPIC_BASE_URL"}
    expected |= {name for name in INHERITED_VARS if os.environ.get(name)}  # proxies, CA files
    assert set(env) - {"PWD", "SHLVL", "_"} == expected  # (/bin/sh adds PWD, SHLVL, _)
    assert child["stdin"] == "-p looks like a flag"  # on stdin, never parsed as an option
    assert child["argv"] == [
        "-p", "--output-format", "stream-json", "--verbose", "--model", "claude-opus-5-5"
    ]  # fmt: skip
    assert os.environ["ANTHROPIC_API_KEY"] == "sk-ant-api03-decoy-from-the-parent"


async def test_an_oauth_token_gets_an_oauth_placeholder_in_claude_code_oauth_token_only(
    keystore: Keystore, fake_bin: Path, seen_file: Path
) -> None:
    secret = oauth_token("env")
    with leased(keystore, "claude-code", secret) as lease:
        await executor(fake_bin, seen_file).run_turn(
            lease, prompt="hi", model=None, checkpoint=None
        )
    env = seen(seen_file)["env"]
    assert env["CLAUDE_CODE_OAUTH_TOKEN"].startswith("sk-ant-oat01-keyrelay-")
    assert secret not in json.dumps(env)
    assert "ANTHROPIC_API_KEY" not in env and "ANTHROPIC_AUTH_TOKEN" not in env


async def test_the_checkpoint_resumes_the_session_in_another_workdir_and_a_retry_does_not_duplicate(
    keystore: Keystore, fake_bin: Path, seen_file: Path, tmp_path: Path
) -> None:
    here, there = tmp_path / "machine-a" / "work", tmp_path / "machine b" / "work.dir"
    here.mkdir(parents=True)
    there.mkdir(parents=True)
    with leased(keystore, "claude-code", api_key("a")) as lease:
        first = await executor(fake_bin, seen_file, workdir=here).run_turn(
            lease, prompt="one", model=None, checkpoint=None
        )
        assert isinstance(first, TurnResult)
        assert first.checkpoint["cwd_key"] == project_key(here.resolve())
        assert first.text == "fake turn 1: one"
        for _ in range(2):  # the same turn twice from the same checkpoint: a retry
            second = await executor(fake_bin, seen_file, workdir=there).run_turn(
                lease, prompt="two", model=None, checkpoint=first.checkpoint
            )
            assert isinstance(second, TurnResult)
            assert second.text == "fake turn 2: two"
            assert second.checkpoint["session_id"] == first.checkpoint["session_id"]
            assert second.checkpoint["cwd_key"] == project_key(there.resolve())
            assert seen(seen_file)["argv"][-2:] == ["--resume", first.checkpoint["session_id"]]
    assert isinstance(second, TurnResult)
    assert second.utilization == pytest.approx(0.4)
    assert second.usage == {"input_tokens": 20, "output_tokens": 5}
    assert [json.loads(line)["text"] for line in second.checkpoint["transcript"].splitlines()] == [
        "one", "fake turn 1: one", "two", "fake turn 2: two"
    ]  # fmt: skip
    json.dumps(second.checkpoint)  # JSON-serializable, for Prefect


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_a_turn_that_overruns_kills_the_whole_process_group(
    keystore: Keystore, fake_bin: Path, seen_file: Path, how: str
) -> None:
    ex = executor(fake_bin, seen_file, "hang", timeout_s=0.5 if how == "timeout" else 60)
    with leased(keystore, "claude-code", api_key("hang")) as lease:
        if how == "timeout":
            with pytest.raises(ProviderTimeout, match=r"no result within 0\.5 s"):
                await ex.run_turn(lease, prompt="hi", model=None, checkpoint=None)
        else:
            with anyio.move_on_after(0.5) as scope:
                await ex.run_turn(lease, prompt="hi", model=None, checkpoint=None)
            assert scope.cancelled_caught
    child = seen(seen_file)
    assert not alive(child["pid"]) and not alive(child["grandchild"])
    assert not Path(child["env"]["HOME"]).exists()


async def test_a_rate_limit_in_the_output_is_returned_as_the_signal(
    keystore: Keystore, fake_bin: Path, seen_file: Path
) -> None:
    with leased(keystore, "claude-code", oauth_token("limit")) as lease:
        signal = await executor(fake_bin, seen_file, "limit", clock=lambda: T0).run_turn(
            lease, prompt="hi", model=None, checkpoint=None
        )
    assert isinstance(signal, RateLimitSignal)
    assert (signal.kind, signal.resets_at) == ("usage_limit", T0 + timedelta(hours=5))


async def test_failures_raise_their_error_class(
    keystore: Keystore, fake_bin: Path, seen_file: Path
) -> None:
    secret = api_key("fail")
    lost = {"session_id": "0b7c7c5e-1111-2222-3333-444455556666", "transcript": "{}\n"}
    with leased(keystore, "claude-code", secret) as lease:
        with pytest.raises(AgentFailed, match=r"exited 3: TypeError: something broke") as crash:
            await executor(fake_bin, seen_file, "crash").run_turn(
                lease, prompt="hi", model=None, checkpoint=None
            )
        with pytest.raises(KeyRejected, match=r"API status 401") as rejected:
            await executor(fake_bin, seen_file, "unauthorized").run_turn(
                lease, prompt="hi", model=None, checkpoint=None
            )
        with pytest.raises(SessionNotFound, match="No conversation found"):
            await executor(fake_bin, seen_file, "forget").run_turn(
                lease, prompt="hi", model=None, checkpoint=lost
            )
        not_executable = seen_file.with_name("not-executable")
        not_executable.write_text("")
        with pytest.raises(AgentFailed, match="could not start"):
            await ClaudeCodeExecutor(claude_bin=not_executable, sandbox="off").run_turn(
                lease, prompt="hi", model=None, checkpoint=None
            )
    assert type(crash.value) is AgentFailed and crash.value.status is None
    assert rejected.value.status == 401 and rejected.value.key_id == lease.key_id
    for error in (crash.value, rejected.value):
        assert secret not in str(error) and error.__context__ is None


async def test_an_agent_echoing_its_credential_can_only_echo_the_placeholder(
    keystore: Keystore, fake_bin: Path, seen_file: Path
) -> None:
    secret = api_key("leak")
    with leased(keystore, "claude-code", secret) as lease:
        result = await executor(fake_bin, seen_file, "leak").run_turn(
            lease, prompt="hi", model=None, checkpoint=None
        )
    assert isinstance(result, TurnResult)
    assert result.text.startswith("fake turn 1: hi sk-ant-api03-keyrelay-")  # dead after the turn
    assert secret not in result.text and mask(secret) not in result.text
    assert secret not in json.dumps(result.checkpoint)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"extra_args": ["--resume", "x"]}, "extra_args: the executor sets --resume"),
        ({"extra_args": ["--output-format=json"]}, "--output-format"),
        ({"extra_env": {"ANTHROPIC_API_KEY": "x"}}, "extra_env: keyrelay sets ANTHROPIC_API_KEY"),
        ({"extra_env": {"CLAUDE_CODE_MAX_RETRIES": "3"}}, "CLAUDE_CODE_MAX_RETRIES"),
        ({"workdir": "/nonexistent/dir"}, "workdir"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_options_that_would_undo_the_executors_guarantees_are_refused(
    options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidInput, match=problem):
        ClaudeCodeExecutor(**options)


@pytest.mark.parametrize(
    "checkpoint",
    [
        {"session_id": "../../etc/passwd", "transcript": "{}"},
        {"session_id": "abc", "transcript": ""},
        {"transcript": "{}"},
    ],
)
async def test_a_malformed_checkpoint_is_refused_before_the_cli_starts(
    keystore: Keystore, fake_bin: Path, seen_file: Path, checkpoint: dict[str, Any]
) -> None:
    lease_cm = leased(keystore, "claude-code", api_key("bad"))
    with lease_cm as lease, pytest.raises(InvalidInput, match="checkpoint"):
        await executor(fake_bin, seen_file).run_turn(
            lease, prompt="hi", model=None, checkpoint=checkpoint
        )
    assert not seen_file.exists()


def test_the_default_workdir_is_private_to_the_executor_and_removed_with_it() -> None:
    ex = ClaudeCodeExecutor()
    workdir = ex.workdir
    assert workdir.is_dir() and workdir.parent == Path(tempfile.gettempdir()).resolve()
    assert ClaudeCodeExecutor().workdir != workdir
    del ex
    assert not workdir.exists()
