"""`keyrelay emulate` with a limit and an agent script given as flags, through the real console
script (as tests/test_cli.py runs the other commands)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.test_cli import Cli, _serve, assert_one_error_line

BASH = {"name": "Bash", "description": "run", "input_schema": {"type": "object"}}


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


def ask(http: httpx.Client, key: str, *, tools: list[object] | None = None) -> httpx.Response:
    body: dict[str, object] = {
        "model": "m",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if tools is not None:
        body["tools"] = tools
    return http.post("/v1/messages", json=body, headers={"x-api-key": key})


def test_flags_limit_every_key_and_play_bash_steps(cli: Cli, tmp_path: Path) -> None:
    log = tmp_path / "emulate.log"
    flags = ("--requests", "2", "--window-s", "30", "--agent-steps", "2")
    for http in _serve(cli, log, "emulate", *flags, env={}, probe="/_admin/config"):
        config = http.get("/_admin/config").json()
        assert config["limits"] == [
            {"requests": 2, "window_s": 30.0, "window": "fixed"}
            | {"unified_claim": "five_hour", "warning_utilization": 0.8}
        ]
        key_a, key_b = "sk-ant-api03-emulate-a-000000000000", "sk-ant-api03-emulate-b-000000000000"
        statuses = [ask(http, key_a).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert ask(http, key_b).status_code == 200  # one window per key
        called = ask(http, key_b, tools=[BASH]).json()
        assert called["stop_reason"] == "tool_use"
        assert called["content"][-1]["input"]["command"] == "echo step1 >> agent-steps.txt"
        limited = ask(http, key_a)
        assert limited.status_code == 429 and 0 < int(limited.headers["retry-after"]) <= 30
    assert "2 requests per 30 s for every key; agent script: 2 steps (Bash)" in log.read_text()


def test_flags_win_over_the_config_file(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "emulator.json"
    config.write_text(
        json.dumps(
            {
                "limits": [
                    {"key_prefix": "sk-vip-", "requests": 100, "window_s": 5},
                    {"requests": 1, "window_s": 5},  # the flags' rule replaces this one
                ],
                "agent": {"steps": [], "final_text": "from the file"},
            }
        )
    )
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps({"steps": [{"tool": "Bash", "input": {"command": "ls"}}], "final_text": "ok"})
    )
    log = tmp_path / "emulate.log"
    args = ("--config", str(config), "--input-tokens", "5000", "--agent-script", str(script))
    for http in _serve(cli, log, "emulate", *args, env={}, probe="/_admin/config"):
        body = http.get("/_admin/config").json()
        assert [
            (r.get("key_prefix"), r.get("requests"), r.get("input_tokens")) for r in body["limits"]
        ] == [
            ("sk-vip-", 100, None),
            (None, None, 5000),
        ]
        assert body["agent"]["final_text"] == "ok"
        assert ask(http, "sk-vip-aaaaaaaaaaaaaaaaaaaa", tools=[BASH]).json()["content"][-1][
            "input"
        ] == {"command": "ls"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--requests", "0"], "--requests must be at least 1, got 0"),
        (["--input-tokens", "-5"], "--input-tokens must be at least 1, got -5"),
        (["--window-s", "30"], "--window-s needs --requests or --input-tokens"),
        (["--requests", "3", "--window-s", "0"], "--window-s must be more than 0, got 0"),
        (["--agent-steps", "0"], "--agent-steps must be at least 1, got 0"),
        (["--requests", "many"], "Invalid value for '--requests'"),
    ],
)
def test_bad_flag_values_are_one_clear_line(cli: Cli, flags: list[str], message: str) -> None:
    assert_one_error_line(cli("emulate", "--port", "0", *flags), contains=message)


def test_bad_agent_flags_are_one_clear_line(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"steps": [{"tool": "Bash", "input": {"description": "x"}}]}))
    both = cli("emulate", "--agent-steps", "2", "--agent-script", str(script))
    assert_one_error_line(both, contains="give --agent-steps or --agent-script, not both")
    invalid = cli("emulate", "--agent-script", str(script))
    assert_one_error_line(invalid, contains="a Bash step needs input command")
    assert_one_error_line(invalid, contains="invalid AgentScript: steps.0")
    missing = cli("emulate", "--agent-script", str(tmp_path / "nope.json"))
    assert_one_error_line(missing, contains="does not exist")


def test_python_dash_m_takes_the_same_flags() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "api.emulator", "--agent-steps", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--agent-steps must be at least 1, got 0" in done.stderr
