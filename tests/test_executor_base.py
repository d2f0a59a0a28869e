"""The executor contract without a provider: the registry and its options, the error classes,
redaction, the child environment and the transcript's file layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from flows.executors.anthropic import AnthropicExecutor
from flows.executors.base import AGENTS, Executor, TurnResult, executor_for
from flows.executors.claude_code import ClaudeCodeExecutor
from flows.executors.errors import (
    AgentFailed,
    ExecutorError,
    KeyRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RequestRejected,
    SessionNotFound,
)
from flows.executors.openai import OpenAIExecutor
from flows.executors.redact import Redactor
from flows.executors.subprocess_env import CREDENTIAL_VARS, child_env, credential_var
from flows.executors.transcript import Session, find_transcript, project_key
from keystore import InvalidInput, ProviderError, mask

SECRET = "sk-ant-api03-" + "x" * 40 + "-TAIL"


@pytest.mark.parametrize(
    ("agent", "cls"),
    [
        ("anthropic", AnthropicExecutor),
        ("openai", OpenAIExecutor),
        ("claude-code", ClaudeCodeExecutor),
    ],
)
def test_executor_for_builds_the_agents_executor(agent: str, cls: type) -> None:
    executor = executor_for(agent, timeout_s=30)
    assert type(executor) is cls and executor.agent == agent
    assert isinstance(executor, Executor)
    assert executor.timeout_s == 30  # type: ignore[attr-defined]


def test_the_agents_are_the_keystore_providers() -> None:
    assert set(AGENTS) == {"claude-code", "anthropic", "openai"}


def test_an_unknown_agent_or_option_is_refused_by_name() -> None:
    with pytest.raises(InvalidInput, match="unknown agent 'gemini'"):
        executor_for("gemini")
    with pytest.raises(InvalidInput, match=r"unknown option\(s\) for openai: max_tokenz"):
        executor_for("openai", max_tokenz=5)
    with pytest.raises(InvalidInput, match="max_tokens"):
        executor_for("anthropic", max_tokens=0)


def test_a_turn_result_is_frozen_and_its_repr_leaves_the_checkpoint_out() -> None:
    result = TurnResult(
        text="hi", checkpoint={"transcript": "x" * 1000}, utilization=None, usage={}
    )
    with pytest.raises(AttributeError):
        result.text = "changed"  # type: ignore[misc]
    assert "transcript" not in repr(result)


@pytest.mark.parametrize(
    "cls",
    [
        ExecutorError,
        KeyRejected,
        ProviderUnavailable,
        ProviderTimeout,
        RequestRejected,
        AgentFailed,
        SessionNotFound,
    ],
)
def test_errors_are_provider_errors_and_survive_pickling(cls: type[ExecutorError]) -> None:
    error = cls("anthropic key 3: HTTP 401", agent="anthropic", key_id=3, status=401)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ProviderError) and type(copy) is cls
    assert (str(copy), copy.agent, copy.key_id, copy.status, copy.request_id) == (
        "anthropic key 3: HTTP 401",
        "anthropic",
        3,
        401,
        None,
    )


def test_the_redactor_masks_the_secret_everywhere_and_never_shows_it() -> None:
    redact = Redactor(SECRET)
    masked = mask(SECRET)
    assert redact.text(f"a {SECRET} b {SECRET}") == f"a {masked} b {masked}"
    assert redact.value({SECRET: [SECRET, 1, None, {"k": SECRET}]}) == {
        masked: [masked, 1, None, {"k": masked}]
    }
    assert redact.excerpt(f"line\n{SECRET}\n" + "y" * 1000, limit=50).endswith("...")
    assert SECRET not in repr(redact)
    assert Redactor("").text("unchanged") == "unchanged"


def test_the_credential_variable_follows_the_secret_kind() -> None:
    assert credential_var("sk-ant-oat01-abc") == "CLAUDE_CODE_OAUTH_TOKEN"
    assert credential_var("sk-ant-api03-abc") == "ANTHROPIC_API_KEY"
    assert credential_var("anything-else") == "ANTHROPIC_API_KEY"


def test_the_child_environment_is_built_from_the_allow_list_only(tmp_path: Path) -> None:
    parent = {
        "PATH": "/usr/bin",
        "HTTPS_PROXY": "http://proxy:3128",
        "ANTHROPIC_API_KEY": "sk-parent",
        "ANTHROPIC_AUTH_TOKEN": "sk-parent-token",
        "CLAUDE_CODE_MAX_RETRIES": "5",
        "HOME": "/root",
        "DATABASE_URL": "postgresql://secret",
    }
    frozen = dict(parent)
    env = child_env(
        secret="sk-ant-oat01-token",
        home=tmp_path / "h",
        config_dir=tmp_path / "h" / ".claude",
        tmp_dir=tmp_path / "t",
        parent=parent,
    )
    assert env == {
        "PATH": "/usr/bin",
        "HTTPS_PROXY": "http://proxy:3128",
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "HOME": str(tmp_path / "h"),
        "CLAUDE_CONFIG_DIR": str(tmp_path / "h" / ".claude"),
        "TMPDIR": str(tmp_path / "t"),
        "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-token",
    }
    assert parent == frozen
    assert [v for v in CREDENTIAL_VARS if v in env] == ["CLAUDE_CODE_OAUTH_TOKEN"]


def test_the_project_key_is_the_cwd_with_non_alphanumerics_as_dashes() -> None:
    # The example of CLAUDE_CLI_NOTES.md, verified against the real CLI.
    assert project_key(Path("/tmp/x/dir_with.dots and space")) == "-tmp-x-dir-with-dots-and-space"


def test_a_session_is_restored_under_the_current_cwd_and_found_after_the_turn(
    tmp_path: Path,
) -> None:
    session = Session(session_id="abc-123", transcript='{"a": 1}\n', cwd_key="-elsewhere")
    config = tmp_path / "config"
    path = session.restore(config_dir=config, cwd=Path("/work/here"))
    assert path == config / "projects" / "-work-here" / "abc-123.jsonl"
    assert path.read_text() == '{"a": 1}\n'
    assert find_transcript(config, "abc-123") == path
    assert find_transcript(config, "other") is None
    assert find_transcript(config, "../projects") is None
    assert Session.from_checkpoint(session.to_checkpoint()) == session
