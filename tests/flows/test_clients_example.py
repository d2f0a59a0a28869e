"""docs/examples/own_tool_loop.py, a user's own tool loop on the Anthropic SDK, against the
emulator playing an agent that calls the example's `lookup` tool: it finishes across a 429 (the
next key within one task retry), across a spent pool in-process when not deployed, and, served
by a real `serve()` process, across a deferral without making any call twice."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment

from api.emulator import AgentScript, LimitRule, ToolStep, fingerprint
from tests.flows.support import ROOT, FlowEnv, ServeProcess, serving, wait_for_run
from tests.flows.test_clients import add_key, spend_outside

pytestmark = pytest.mark.anyio

EXAMPLE = ROOT / "docs" / "examples" / "own_tool_loop.py"
QUESTION = "How many people live in Lyon, and which river flows through it?"
FINAL = "About 520,000 people; the Rhône."
SCRIPT = AgentScript(
    steps=[
        ToolStep(tool="lookup", input={"topic": "Lyon"}, text="Looking up Lyon."),
        ToolStep(tool="lookup", input={"topic": "Rhône"}),
    ],
    final_text=FINAL,
)


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("own_tool_loop", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = load_example()


def calls(env: FlowEnv) -> list[tuple[int, str | None, int]]:
    """(status, key fingerprint, tool results sent) of every request the emulator got."""
    return [(e.status, e.key_fingerprint, e.tool_results) for e in env.emulator.admin.log()]


def test_the_tool_runs_here() -> None:
    assert "520,000" in example.run_tool("lookup", {"topic": " Lyon "})
    assert "Nothing is known" in example.run_tool("lookup", {"topic": "Atlantis"})
    assert "no tool named" in example.run_tool("bash", {})


async def test_the_loop_finishes_across_a_429_on_the_next_key(flow_env: FlowEnv) -> None:
    a, secret_a = add_key(flow_env, "a", "anthropic", priority=1)
    _, secret_b = add_key(flow_env, "b", "anthropic", priority=2)
    flow_env.emulator.admin.set_agent(SCRIPT)
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-a-", requests=1, window_s=60)]
    )
    await spend_outside(flow_env, "anthropic", secret_a)

    answer = await example.own_tool_loop(QUESTION)

    assert answer == FINAL
    fa, fb = fingerprint(secret_a), fingerprint(secret_b)
    assert calls(flow_env) == [
        (200, fa, 0),  # another application spent a's window
        (429, fa, 0),  # the first call; its one task retry went to b
        (200, fb, 0),
        (200, fb, 1),  # each tool's result went back, and the loop went on
        (200, fb, 2),
    ]
    assert [e.key_id for e in flow_env.store.audit_events(type="key_rate_limited")] == [a]


async def test_a_run_that_is_not_deployed_waits_for_the_reset_in_process(
    flow_env: FlowEnv,
) -> None:
    add_key(flow_env, "a", "anthropic")
    flow_env.store.update_config(inline_wait_max_s=0.5)  # a deployed run would defer
    flow_env.emulator.admin.set_agent(SCRIPT)
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-", requests=2, window_s=3)]
    )

    answer = await example.own_tool_loop(QUESTION)

    assert answer == FINAL
    log = flow_env.emulator.admin.log()
    assert [e.status for e in log] == [200, 200, 200]  # never sent into a certain refusal
    assert log[2].at - log[0].at >= 2.5  # the third call waited for the window to reset
    assert flow_env.store.audit_events(type="pool_waiting") == []


@pytest.fixture
def example_served(flow_env: FlowEnv, tmp_path: Path) -> Iterator[ServeProcess]:
    """`python docs/examples/own_tool_loop.py --serve` against the test server."""
    command = (str(EXAMPLE.relative_to(ROOT)), "--serve")
    with serving(flow_env, tmp_path / "serve.log", command, "own-tool-loop/default") as served:
        yield served


WINDOW_S = 10.0


@pytest.mark.slow
async def test_deployed_the_loop_gives_its_worker_back_and_resumes_where_it_stopped(
    flow_env: FlowEnv, example_served: ServeProcess
) -> None:
    a, _ = add_key(flow_env, "a", "anthropic", priority=1)
    add_key(flow_env, "b", "anthropic", priority=2)
    flow_env.store.update_config(inline_wait_max_s=2)
    flow_env.emulator.admin.set_agent(SCRIPT)
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-", requests=1, window_s=WINDOW_S)]
    )

    run = await run_deployment(
        "own-tool-loop/default", timeout=0, parameters={"question": QUESTION}
    )
    deferred = await wait_for_run(
        run.id,
        lambda r: r.state_type == StateType.SCHEDULED and r.state_name == "AwaitingRateLimit",
        60,
        "never deferred",
    )
    # calls 1 and 2 on a and b, each of whose answers said no request was left: the third
    # found the pool spent and the run gave its worker back until a's reset
    assert [e.status for e in flow_env.emulator.admin.log()] == [200, 200]
    reset_a = flow_env.store.get_key(a).cooling_until
    assert reset_a is not None and deferred.next_scheduled_start_time is not None
    assert deferred.next_scheduled_start_time >= reset_a
    assert deferred.state is not None and "Every anthropic key is spent" in (
        deferred.state.message or ""
    )
    assert [e.run_id for e in flow_env.store.audit_events(type="pool_waiting")] == [str(run.id)]

    finished = await wait_for_run(
        run.id, lambda r: r.state is not None and r.state.is_final(), WINDOW_S + 60, "unfinished"
    )
    assert finished.state_type == StateType.COMPLETED, example_served.output()
    assert finished.run_count == 2
    log = flow_env.emulator.admin.log()
    # the resumed run got calls 1 and 2 from Prefect's cache and made only the third
    assert [(e.status, e.tool_results) for e in log] == [(200, 0), (200, 1), (200, 2)]
    assert log[2].at >= reset_a.timestamp()
