"""Every key spent: the run gives its worker back, waits as Scheduled/AwaitingRateLimit and is
picked up again by a real `serve()` process at the reset, without redoing finished turns.

These tests pin the Prefect 3.9 behaviour flows/deferral.py relies on: if an upgrade changes it
(the server refusing Running -> Scheduled, Pause ending the run differently, a cancelled waiting
run sticking in Cancelling), they fail here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment

from api.emulator import LimitRule
from flows.turn_loop import RESUME_MARGIN_S
from tests.flows.support import FlowEnv, ServeProcess, add_key, serving, wait_for_run

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
WINDOW_S = 20.0


def _deferred(run: FlowRun) -> bool:
    return run.state_type == StateType.SCHEDULED and run.state_name == "AwaitingRateLimit"


def _final(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_final()


def _two_spent_keys(flow_env: FlowEnv) -> tuple[int, int]:
    a = add_key(flow_env, "a", priority=1)
    b = add_key(flow_env, "b", priority=2)
    flow_env.store.update_config(inline_wait_max_s=2)
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-", requests=1, window_s=WINDOW_S)]
    )
    return a, b


async def test_spent_pool_defers_then_resumes_at_the_reset(
    flow_env: FlowEnv, server_process: ServeProcess
) -> None:
    a, b = _two_spent_keys(flow_env)
    run = await run_deployment(
        "agent-run/default",
        timeout=0,
        parameters={
            "prompt": "first",
            "agent": "anthropic",
            "steps": 3,
            "followups": ["second", "third"],
        },
    )
    deferred = await wait_for_run(run.id, _deferred, 60, "never deferred")

    # turn 1 on a, whose answer said it had no request left: turn 2 on b, likewise; turn 3
    # found both spent until a's reset, and no request was sent to a certain refusal
    reset_a = flow_env.store.get_key(a).cooling_until
    assert reset_a is not None
    assert deferred.next_scheduled_start_time is not None
    # scheduled at the reset (plus the margin that lets a run start a moment early and wait)
    assert deferred.next_scheduled_start_time == reset_a + timedelta(seconds=RESUME_MARGIN_S)
    assert deferred.infrastructure_pid is None  # nothing holds it; cancel would not stick
    assert deferred.state is not None and "Every anthropic key is spent" in (
        deferred.state.message or ""
    )
    assert [e.status for e in flow_env.emulator.admin.log()] == [200, 200]

    finished = await wait_for_run(run.id, _final, WINDOW_S + 60, "never finished")
    assert finished.state_type == StateType.COMPLETED, server_process.output()
    assert finished.run_count == 2
    log = flow_env.emulator.admin.log()
    # finished turns were not run again; turn 3 was sent after the reset, same conversation
    assert [e.status for e in log] == [200, 200, 200]
    assert [e.user_turns for e in log] == [1, 2, 3]
    assert log[-1].last_user_text == "third"
    assert log[-1].at >= reset_a.timestamp()
    # how late after the reset it resumed is measured in bench/flow_overhead.py, not here
    assert len(flow_env.store.audit_events(type="pool_resumed")) == 1
    async with get_client() as client:
        states = await client.read_flow_run_states(run.id)
    running = [s.timestamp for s in states if s.type == StateType.RUNNING]
    assert len(running) == 2
    waiting = flow_env.store.audit_events(type="pool_waiting")
    assert [e.run_id for e in waiting] == [str(run.id)]
    checkpoint = flow_env.store.load_checkpoint(str(run.id))
    assert checkpoint is not None
    # turn 3 on whichever key was back first (b's window opened a moment after a's: with the
    # resume margin both may be back, and then the run keeps b, the key it last used)
    assert [t["key_id"] for t in checkpoint["turns"]] in ([a, b, a], [a, b, b])
    assert flow_env.store.audit_events(type="key_rate_limited") == []


async def test_a_waiting_run_can_be_cancelled(
    flow_env: FlowEnv, server_process: ServeProcess
) -> None:
    _two_spent_keys(flow_env)
    run = await run_deployment(
        "agent-run/default",
        timeout=0,
        parameters={"prompt": "first", "agent": "anthropic", "steps": 3},
    )
    await wait_for_run(run.id, _deferred, 60, "never deferred")
    async with get_client() as client:
        from prefect.states import Cancelling

        await client.set_flow_run_state(run.id, Cancelling(message="user cancelled"))
    cancelled = await wait_for_run(run.id, _final, 10, "not cancelled")
    assert cancelled.state_type == StateType.CANCELLED
    await anyio.sleep(WINDOW_S - 5)  # past the reset: nobody resumed it
    again = await wait_for_run(run.id, _final, 5, "?")
    assert again.state_type == StateType.CANCELLED and again.run_count == 1


async def test_serve_process_is_free_while_a_run_waits(
    flow_env: FlowEnv, server_process: ServeProcess
) -> None:
    _two_spent_keys(flow_env)
    add_key(flow_env, "o", provider="openai")
    waiting = await run_deployment(
        "agent-run/default",
        timeout=0,
        parameters={"prompt": "first", "agent": "anthropic", "steps": 3},
    )
    await wait_for_run(waiting.id, _deferred, 60, "never deferred")
    # serve runs --limit 2: two more runs complete while the first one waits
    others = [
        await run_deployment(
            "agent-run/default", timeout=0, parameters={"prompt": f"other {i}", "agent": "openai"}
        )
        for i in range(2)
    ]
    for other in others:
        done = await wait_for_run(other.id, _final, 60, "other run never finished")
        assert done.state_type == StateType.COMPLETED
    still = await wait_for_run(waiting.id, lambda r: True, 1, "?")
    assert _deferred(still) or still.state_type in (StateType.PENDING, StateType.RUNNING)
    assert datetime.now(UTC) < (still.next_scheduled_start_time or datetime.now(UTC)) + timedelta(
        seconds=WINDOW_S
    )


async def test_stopping_serve_or_its_runs_while_they_park_leaves_them_waiting(
    flow_env: FlowEnv, tmp_path: Path
) -> None:
    """Two ways a stop meets a run that parks. A `serve` process stopped while the process of a
    run that has just parked is still exiting cancels what it runs and kills it; a SIGTERM sent
    to the run's own process (`systemctl stop` signals every process of the service) can land
    between the server accepting the Scheduled state and the deferral's end. Either way the
    parked run must stay AwaitingRateLimit (the deferral reported the attempt concluded and held
    the signal), not turn Cancelled or Crashed."""
    lingering = ("-m", "tests.flows.lingering_flow")
    with serving(flow_env, tmp_path / "serve.log", lingering, "parks-and-lingers/test") as served:
        runs = [
            await run_deployment("parks-and-lingers/test", timeout=0),
            await run_deployment(
                "parks-and-lingers/test", parameters={"sigterm_while_parking": True}, timeout=0
            ),
        ]
        for run in runs:
            await wait_for_run(run.id, _deferred, 60, "never parked")
        await anyio.sleep(1)  # the engines are done; the processes sleep in their atexit hooks
        served.process.terminate()
        served.process.wait(timeout=30)
    for run in runs:
        after = await wait_for_run(run.id, lambda r: True, 1, "?")
        assert _deferred(after), (after.state_name, served.output()[-2000:])
    assert "Cancelled flow run" not in served.output()
