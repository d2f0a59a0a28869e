"""End to end with the real `claude` CLI: two subscription tokens, one spent mid-run (the run
moves to the other), then both spent (the run defers and gives its `serve()` slot back), then it
resumes at the reset and finishes the same conversation; the keystore learns each window from
the relay, so no request is sent into a refusal."""

from __future__ import annotations

import time
from uuid import UUID

import anyio
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment

from api.emulator import LimitRule
from flows.executors.claude_bin import ensure_claude_bin
from tests.flows.support import SECRETS, FlowEnv, ServeProcess

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
WINDOW_S = 20.0


@pytest.fixture
def claude_env(flow_env: FlowEnv, monkeypatch: pytest.MonkeyPatch) -> FlowEnv:
    # Installs the CLI into the cache on first use; a failure fails the test (never skips).
    claude = str(ensure_claude_bin())
    monkeypatch.setenv("KEYRELAY_CLAUDE_BIN", claude)
    flow_env.env["KEYRELAY_CLAUDE_BIN"] = claude
    return flow_env


async def _watch(run_id: UUID, timeout_s: float) -> tuple[FlowRun, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(run_id)
            name = f"{run.state_type.value if run.state_type else '?'}/{run.state_name}"
            if not seen or seen[-1] != name:
                seen.append(name)
            if run.state is not None and run.state.is_final():
                return run, seen
            assert time.monotonic() < deadline, f"run stuck: {seen}"
            await anyio.sleep(0.2)


@pytest.fixture
def serve_with_claude(claude_env: FlowEnv, server_process: ServeProcess) -> ServeProcess:
    return server_process


async def test_claude_code_run_rotates_defers_resumes_and_finishes(
    claude_env: FlowEnv, serve_with_claude: ServeProcess
) -> None:
    env = claude_env
    tokens = {"a": "sk-ant-oat01-a-" + "a" * 60, "b": "sk-ant-oat01-b-" + "b" * 60}
    SECRETS.update(tokens.values())  # the session's secret scan looks for these too
    a = env.store.add_key(name="sub-a", provider="claude-code", priority=1, secret=tokens["a"]).id
    b = env.store.add_key(name="sub-b", provider="claude-code", priority=2, secret=tokens["b"]).id
    env.store.update_config(inline_wait_max_s=2)
    env.emulator.admin.set_limits(
        [
            LimitRule(key_prefix="sk-ant-oat01-a-", requests=2, window_s=WINDOW_S),
            # b's window outlasts a's by far, so even a loaded machine resumes the run while
            # only a is back (the run's last key, b, would otherwise be kept by affinity)
            LimitRule(key_prefix="sk-ant-oat01-b-", requests=1, window_s=WINDOW_S * 10),
        ]
    )
    run = await run_deployment(
        "agent-run/default",
        timeout=0,
        parameters={
            "prompt": "Say hello.",
            "agent": "claude-code",
            "steps": 4,
            "followups": ["Second question.", "Third question.", "Last question."],
        },
    )
    final, states = await _watch(run.id, 180)
    assert final.state_type == StateType.COMPLETED, (states, serve_with_claude.output()[-3000:])
    assert "SCHEDULED/AwaitingRateLimit" in states
    assert final.run_count == 2

    served = [(e.status, e.user_turns, e.last_user_text) for e in env.emulator.admin.log()]
    # Every answer went through the turn's relay to the keystore: a's second answer said its
    # window was used up, b's first likewise, so no request was ever sent into a refusal.
    assert [status for status, _, _ in served] == [200, 200, 200, 200], served
    assert [turns for _, turns, _ in served] == [1, 2, 3, 4]  # one conversation throughout
    assert served[-1][2] == "Last question."
    checkpoint = env.store.load_checkpoint(str(run.id))
    assert checkpoint is not None
    # a, a, then b (a spent), then both spent: deferred until a's window reset, back on a
    assert [t["key_id"] for t in checkpoint["turns"]] == [a, a, b, a]
    history = [(e.type, e.key_id) for e in reversed(env.store.audit_events())]
    assert len(env.store.audit_events(type="pool_waiting")) == 1, history
    assert len(env.store.audit_events(type="pool_resumed")) == 1, history
    assert env.store.audit_events(type="key_rate_limited") == [], history
