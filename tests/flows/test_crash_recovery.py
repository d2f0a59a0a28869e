"""A run whose serve process is killed mid-turn is marked Crashed within a bounded time, scheduled
again, picked up by another serve process and completed from its checkpoint; past the bound, a
run that comes back from a crash fails with a message that says so.

Real processes against the session's Prefect test server (its trigger and action services run):
`python -m deployments.serve` children and keyrelay's automations as `keyrelay automations apply`
creates them. These pin the Prefect 3.9.1 behaviour flows/recovery.py relies on: the server
accepts Running -> Crashed from the automation, Crashed -> Scheduled for a deployment's run, and
the runner picks the rescheduled run up.

The crash window is KEYRELAY_TEST_CRASH_AFTER_S (default 60, the least keyrelay accepts), so the
test takes 1.5-2 minutes; with 90 (keyrelay's default) it measures what users get:

    KEYRELAY_TEST_CRASH_AFTER_S=90 .venv/bin/pytest -s tests/flows/test_crash_recovery.py -k killed
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Crashed, Running, Scheduled

from deployments.automations import AutomationOptions, crash_message
from flows.checkpoint import RunCheckpoint
from flows.recovery import AWAITING_CRASH_RECOVERY, HEARTBEAT_FREQUENCY_S, MAX_CRASH_RESUMPTIONS
from tests.flows.automation_support import automations_applied, wait_for
from tests.flows.support import FlowEnv, ServeProcess, add_key
from tests.scale_out.processes import ROOT, ChildProcess, descendants

pytestmark = [pytest.mark.slow]

CRASH_AFTER_S = int(os.environ.get("KEYRELAY_TEST_CRASH_AFTER_S", "60"))
DETECTION_SLACK_S = 15  # the server evaluates proactive triggers every 5 s; events take a moment
REPLY_DELAY_S = 6.0  # each answer takes this long: the kill lands while a turn is at the provider
PROMPTS = ["crash turn 1", "crash turn 2", "crash turn 3"]


@contextlib.contextmanager
def _serve(flow_env: FlowEnv, machine: Path) -> Iterator[ChildProcess]:
    """A serve process as on a machine of its own (own KEYRELAY_HOME and PREFECT_HOME), in its
    own session so that it and everything it started can be killed together."""
    env = {
        **os.environ,
        **flow_env.env,
        "KEYRELAY_HOME": str(machine / "keyrelay"),
        "KEYRELAY_RUNS_DIR": str(machine / "runs"),
        "PREFECT_HOME": str(machine / "prefect"),
        "PYTHONPATH": str(ROOT),
    }
    machine.mkdir()
    serve = ChildProcess.start(
        f"serve on {machine.name}",
        [sys.executable, "-m", "deployments.serve", "--limit", "2"],
        env=env,
        cwd=ROOT,
        log=machine.with_suffix(".log"),
    )
    try:
        serve.wait_for_output("agent-run/default", 90)
        yield serve
    finally:
        serve.stop()


def _kill_machine(serve: ChildProcess) -> None:
    """SIGKILL to the serve process and every process it started (the machine went away)."""
    for pid in [serve.process.pid, *descendants(serve.process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    serve.process.wait(timeout=10)


def _start_run(parameters: dict[str, Any], **state: Any) -> FlowRun:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("agent-run/default")
        return client.create_flow_run_from_deployment(deployment.id, parameters=parameters, **state)


def _read_run(run_id: Any) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _finished(run_id: Any) -> FlowRun | None:
    run = _read_run(run_id)
    if run.state is not None and run.state.is_final() and run.state_type != StateType.CRASHED:
        return run
    return None


def test_a_run_whose_serve_was_killed_mid_turn_resumes_on_another(
    flow_env: FlowEnv, tmp_path: Path
) -> None:
    # One key, one lease at a time: the resumed run gets it only if the dead lease is reclaimed
    # (its TTL is 300 s, far longer than this test).
    key_id = add_key(flow_env, "only")
    flow_env.emulator.admin.set_reply_delay(REPLY_DELAY_S)
    lease_ttl_s = flow_env.store.config().lease_ttl_s
    with (
        automations_applied(AutomationOptions(crash_after_s=CRASH_AFTER_S)),
        _serve(flow_env, tmp_path / "first") as first,
    ):
        run = _start_run(
            {"prompt": PROMPTS[0], "agent": "anthropic", "steps": 3, "followups": PROMPTS[1:]}
        )
        holder = f"flow-run {run.id} turn 2"
        wait_for(
            lambda: any(lease.holder == holder for lease in flow_env.store.active_leases()),
            60,
            "turn 2 never started",
        )
        time.sleep(1.0)  # its request is at the provider, which answers in REPLY_DELAY_S
        killed_at = time.time()
        _kill_machine(first)
        with _serve(flow_env, tmp_path / "second") as second:
            done = wait_for(
                lambda: _finished(run.id), CRASH_AFTER_S + DETECTION_SLACK_S + 60, "not resumed"
            )
            assert done.state_type == StateType.COMPLETED, second.output()
    finished_at = time.time()

    with get_client(sync_client=True) as client:
        states = sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
    names = [s.name for s in states]
    crash = next(s for s in states if s.type == StateType.CRASHED)
    # marked Crashed by the heartbeat automation, within the window after the last heartbeat
    assert crash.message == crash_message(CRASH_AFTER_S)
    crashed_after_s = crash.timestamp.timestamp() - killed_at
    earliest_s = CRASH_AFTER_S - HEARTBEAT_FREQUENCY_S - 3  # killed just before a heartbeat
    assert earliest_s <= crashed_after_s <= CRASH_AFTER_S + DETECTION_SLACK_S
    after_crash = names[names.index("Crashed") :]
    assert after_crash[:2] == ["Crashed", AWAITING_CRASH_RECOVERY], names
    assert after_crash[-2:] == ["Running", "Completed"], names
    running_again = [s for s in states if s.type == StateType.RUNNING][-1]
    assert done.run_count == 2

    # No finished turn was sent again; only the turn in flight was (with turn 1 in it).
    served = [e for e in flow_env.emulator.admin.log() if e.status == 200]
    sent = Counter(e.last_user_text for e in served)
    assert sent[PROMPTS[0]] == 1 and sent[PROMPTS[2]] == 1 and 1 <= sent[PROMPTS[1]] <= 2, sent
    assert all(e.user_turns >= 2 for e in served if e.at > killed_at)
    assert [e.user_turns for e in served if e.last_user_text == PROMPTS[2]] == [3]

    # The dead process's lease was freed by the resumed run, not by its expiry.
    (reclaimed,) = flow_env.store.audit_events(type="lease_reclaimed")
    assert reclaimed.key_id == key_id
    assert reclaimed.details["holder"] == holder
    assert reclaimed.details["reason"] == "its holder restarted"
    assert finished_at - killed_at < lease_ttl_s
    assert not flow_env.store.active_leases()
    checkpoint = RunCheckpoint.model_validate(flow_env.store.load_checkpoint(str(run.id)))
    assert checkpoint.crash_resumptions == 1 and checkpoint.turns_done == 3
    print(
        f"\ncrash recovery (crash_after_s={CRASH_AFTER_S}): killed -> Crashed "
        f"{crashed_after_s:.1f} s, -> Running again "
        f"{running_again.timestamp.timestamp() - killed_at:.1f} s, -> Completed "
        f"{finished_at - killed_at:.1f} s; turns sent {dict(sent)}"
    )


@pytest.mark.parametrize(
    "crash",
    [crash_message(90), "Execution was aborted by a termination signal."],
    ids=["silent", "signalled"],
)
def test_a_run_past_its_crash_resumptions_fails_saying_so(
    flow_env: FlowEnv, server_process: ServeProcess, crash: str
) -> None:
    add_key(flow_env, "k")
    later = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=1))
    with automations_applied(AutomationOptions()):
        run = _start_run({"prompt": "hello", "agent": "anthropic"}, state=later)
        spent = RunCheckpoint(crash_resumptions=MAX_CRASH_RESUMPTIONS)
        flow_env.store.save_checkpoint(str(run.id), spent.model_dump(mode="json"))
        with get_client(sync_client=True) as client:  # as if it had run and been killed
            client.set_flow_run_state(run.id, Running(), force=True)
            client.set_flow_run_state(run.id, Crashed(message=crash), force=True)
        failed = wait_for(lambda: _finished(run.id), 60, "never picked up again")
    assert failed.state_type == StateType.FAILED, server_process.output()
    assert failed.state is not None and failed.state.message is not None
    assert f"resumed {MAX_CRASH_RESUMPTIONS} times, the most keyrelay allows" in (
        failed.state.message
    )
    assert flow_env.emulator.admin.log() == []  # nothing was sent for a run that gave up


def test_a_run_that_crashed_on_its_own_is_left_crashed(
    flow_env: FlowEnv, server_process: ServeProcess
) -> None:
    """A process that exits with an error before the flow starts would crash again, forever: the
    resume automation leaves such a crash alone."""
    add_key(flow_env, "k")
    later = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=1))
    with automations_applied(AutomationOptions()):
        own = _start_run({"prompt": "own fault", "agent": "anthropic"}, state=later)
        killed = _start_run({"prompt": "killed", "agent": "anthropic"}, state=later)
        with get_client(sync_client=True) as client:
            message = "Process exited with status code: 1."
            client.set_flow_run_state(own.id, Crashed(message=message), force=True)
            client.set_flow_run_state(killed.id, Crashed(message=crash_message(90)), force=True)
        # the automation handles Crashed events in order: once the second run came back, the
        # first one was seen and left alone
        done = wait_for(lambda: _finished(killed.id), 60, "the killed run never came back")
        assert done.state_type == StateType.COMPLETED
        with get_client(sync_client=True) as client:
            states = client.read_flow_run_states(own.id)
    assert _read_run(own.id).state_type == StateType.CRASHED
    assert AWAITING_CRASH_RECOVERY not in [s.name for s in states]
