"""A real job end to end: the REAL `claude` CLI runs ONE `agent-run` turn of Bash tool calls in a
repository, started with `prefect deployment run` and served by `deployments.serve` processes.

Key A serves two tool calls and is spent, key B continues the same conversation (its first
request carries A's tool results) for two more and is spent, the run parks as AwaitingRateLimit,
resumes at the reset and finishes. The file the tools append to holds each step once, in order,
and the provider served exactly one call per tool step plus the final answer. A run without a
`workdir` does the same across two workers with different run directories: the second one
resumes in a copy of the first one's directory, restored from the keystore."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import anyio
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType

from api.emulator import AgentScript, LimitRule, fingerprint
from flows.executors.claude_bin import ensure_claude_bin
from tests.flows.support import SECRETS, FlowEnv, serving

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
WINDOW_S = 20.0
STEPS = 5  # A: steps 1-2, B: steps 3-4, after the reset: step 5 and the final answer
TOKENS = {name: f"sk-ant-oat01-{name}-" + name * 60 for name in ("a", "b")}


@pytest.fixture
def job_env(flow_env: FlowEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[FlowEnv]:
    claude = str(ensure_claude_bin())  # installs on first use; a failure fails the test
    monkeypatch.setenv("KEYRELAY_CLAUDE_BIN", claude)
    flow_env.env["KEYRELAY_CLAUDE_BIN"] = claude
    SECRETS.update(TOKENS.values())  # the session's scan of Prefect's records looks for these
    for priority, (name, token) in enumerate(TOKENS.items(), start=1):
        flow_env.store.add_key(
            name=f"sub-{name}", provider="claude-code", priority=priority, secret=token
        )
    flow_env.store.update_config(inline_wait_max_s=2)  # a 20 s reset parks the run
    flow_env.emulator.admin.set_agent(AgentScript.appending_steps(STEPS, file_name="log.txt"))
    flow_env.emulator.admin.set_limits(
        [
            LimitRule(key_prefix=f"sk-ant-oat01-{name}-", requests=2, window_s=WINDOW_S)
            for name in TOKENS
        ]
    )
    yield flow_env


def _deployment_run(env: FlowEnv, **params: object) -> UUID:
    """`prefect deployment run agent-run/default --param k=v ...`, as a user types it."""
    args = [sys.executable, "-m", "prefect", "deployment", "run", "agent-run/default"]
    for name, value in params.items():
        args += ["--param", f"{name}={json.dumps(value) if not isinstance(value, str) else value}"]
    done = subprocess.run(
        args, env={**os.environ, **env.env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", done.stdout)
    assert found, done.stdout
    return UUID(found.group(1))


async def _follow(
    run_id: UUID, until: Callable[[FlowRun], bool], timeout_s: float, seen: list[str]
) -> FlowRun:
    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(run_id)
            name = f"{run.state_type.value if run.state_type else '?'}/{run.state_name}"
            if not seen or seen[-1] != name:
                seen.append(name)
            if until(run):
                return run
            assert time.monotonic() < deadline, f"run stuck: {seen}"
            await anyio.sleep(0.2)


def _parked(run: FlowRun) -> bool:
    return run.state_type == StateType.SCHEDULED and run.state_name == "AwaitingRateLimit"


def _final(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_final()


def _assert_one_conversation_of_single_steps(env: FlowEnv, log_file: Path, run_id: UUID) -> None:
    a, b = (fingerprint(token) for token in TOKENS.values())
    served = env.emulator.admin.log()
    # successful provider calls = tool steps + 1, and none refused: every answer reached the
    # keystore through the turn's relay, which stopped the third request on a spent key itself
    assert [e.status for e in served] == [200] * (STEPS + 1), served
    assert [e.tool_results for e in served] == list(range(STEPS + 1))  # one conversation
    assert [e.key_fingerprint for e in served[:4]] == [a, a, b, b]  # B's first carried A's two
    assert served[4].key_fingerprint == served[5].key_fingerprint
    assert log_file.read_text() == "".join(f"step{i}\n" for i in range(1, STEPS + 1))
    checkpoint = env.store.load_checkpoint(str(run_id))
    assert checkpoint is not None and len(checkpoint["turns"]) == 1
    kept = json.dumps(checkpoint)
    assert not any(token in kept for token in TOKENS.values())
    for path in log_file.parent.rglob("*"):
        if path.is_file():
            assert not any(token in path.read_text(errors="replace") for token in TOKENS.values())


async def test_a_real_job_rotates_mid_turn_parks_resumes_and_runs_each_tool_call_once(
    job_env: FlowEnv, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("a repository the agent works in\n")
    with serving(job_env, tmp_path / "serve.log") as served:
        run_id = _deployment_run(
            job_env,
            prompt="Do the steps.",
            agent="claude-code",
            steps=1,
            workdir=str(repo),
            allowed_tools=["Bash"],
        )
        seen: list[str] = []
        final = await _follow(run_id, _final, 180, seen)
        assert final.state_type == StateType.COMPLETED, (seen, served.output()[-3000:])
    assert "SCHEDULED/AwaitingRateLimit" in seen and final.run_count == 2, seen
    _assert_one_conversation_of_single_steps(job_env, repo / "log.txt", run_id)
    refused = job_env.store.audit_events(type="key_refused_locally")
    assert len(refused) == 2  # A's third request, then B's third, stopped before the provider


async def test_a_parked_run_resumes_on_another_worker_in_a_copy_of_its_directory(
    job_env: FlowEnv, tmp_path: Path
) -> None:
    first, second = tmp_path / "runs-first", tmp_path / "runs-second"
    seen: list[str] = []
    with serving(job_env, tmp_path / "first.log", KEYRELAY_RUNS_DIR=str(first)) as served:
        run_id = _deployment_run(
            job_env, prompt="Do the steps.", agent="claude-code", steps=1, allowed_tools=["Bash"]
        )
        parked = await _follow(run_id, _parked, 120, seen)
        assert _parked(parked), served.output()[-3000:]
    # the first worker is gone before the reset; what it did lives on only in the keystore
    assert (first / str(run_id) / "log.txt").read_text() == "step1\nstep2\nstep3\nstep4\n"
    with serving(job_env, tmp_path / "second.log", KEYRELAY_RUNS_DIR=str(second)) as served:
        final = await _follow(run_id, _final, 120, seen)
        assert final.state_type == StateType.COMPLETED, (seen, served.output()[-3000:])
    _assert_one_conversation_of_single_steps(job_env, second / str(run_id) / "log.txt", run_id)
