"""`keyrelay serve` serves the deployment and `keyrelay run` starts a run through Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.support import FlowEnv, add_key

ROOT = Path(__file__).resolve().parents[2]
KEYRELAY = str(Path(sys.executable).with_name("keyrelay"))
pytestmark = pytest.mark.slow


def test_keyrelay_serve_and_run(flow_env: FlowEnv, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_HOME

    key = add_key(flow_env, "a")
    env = {**os.environ, **flow_env.env, "PREFECT_HOME": str(PREFECT_HOME.value())}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        serve = subprocess.Popen(
            [KEYRELAY, "serve", "--limit", "1"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "agent-run/default" not in log.read_text():
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        done = subprocess.run(
            [
                KEYRELAY,
                "run",
                "hello from the cli",
                "--agent",
                "anthropic",
                "--steps",
                "2",
                "--followup",
                "and again",
                "--wait",
                "--json",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["state"] == "Completed"
        # --wait followed the run: a line per attempt (on stderr, stdout is the JSON)
        assert f"turn 1 on anthropic: Completed: served on key {key} (a)" in done.stderr
        assert f"turn 2 on anthropic: Completed: served on key {key} (a)" in done.stderr
        assert "Completed" in done.stderr.splitlines()[-1]
        assert [(t["turn"], t["key_id"]) for t in summary["turns"]] == [(1, key), (2, key)]
        assert [e.last_user_text for e in flow_env.emulator.admin.log()] == [
            "hello from the cli",
            "and again",
        ]
        bad = subprocess.run(
            [KEYRELAY, "run", "x", "--agent", "gemini"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode != 0 and bad.stderr.startswith("error: --agent must be one of")
        assert "Traceback" not in bad.stderr
        refused = subprocess.run(
            [KEYRELAY, "run", "x", "--agent", "openai", "--workdir", str(tmp_path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0
        assert "--workdir: only the claude-code agent takes these" in refused.stderr
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert serve.returncode is not None
