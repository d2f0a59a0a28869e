"""The pure parts of crash recovery: reading a run's state history, the checkpoint's crash count,
and the automations' definitions agreeing with the flows (no Prefect server here; the real ones
are in test_crash_recovery.py, test_alerts.py and test_automations_cli.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.schemas.objects import State, StateType
from prefect.events.actions import ChangeFlowRunState, DoNothing
from prefect.events.schemas.automations import EventTrigger, Posture

from deployments import automations
from flows.checkpoint import RunCheckpoint
from flows.deferral import AWAITING_RATE_LIMIT
from flows.recovery import (
    AWAITING_CRASH_RECOVERY,
    HEARTBEAT_FREQUENCY_S,
    holder_prefix,
    resumed_after_crash,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _history(*steps: tuple[StateType, str | None]) -> list[State]:
    return [
        State(type=kind, name=name, timestamp=T0 + timedelta(seconds=i))
        for i, (kind, name) in enumerate(steps)
    ]


SCHEDULED = (StateType.SCHEDULED, "Scheduled")
PENDING = (StateType.PENDING, "Pending")
RUNNING = (StateType.RUNNING, "Running")
CRASHED = (StateType.CRASHED, "Crashed")
RECOVERY = (StateType.SCHEDULED, AWAITING_CRASH_RECOVERY)
DEFERRED = (StateType.SCHEDULED, AWAITING_RATE_LIMIT)
LATE = (StateType.SCHEDULED, "Late")


@pytest.mark.parametrize(
    ("steps", "resumed"),
    [
        ([SCHEDULED, PENDING, RUNNING], False),
        ([SCHEDULED, PENDING, RUNNING, CRASHED, RECOVERY, PENDING, RUNNING], True),
        # picked up late (no serve was up): the Late state sits between
        ([SCHEDULED, PENDING, RUNNING, CRASHED, RECOVERY, LATE, PENDING, RUNNING], True),
        # a crash resumption long ago, then a deferral: this execution is not a crash's
        (
            [SCHEDULED, RUNNING, CRASHED, RECOVERY, RUNNING, DEFERRED, PENDING, RUNNING],
            False,
        ),
        ([SCHEDULED, RUNNING, DEFERRED, PENDING, RUNNING, CRASHED, RECOVERY, RUNNING], True),
        # the process died while starting the run
        ([SCHEDULED, PENDING, CRASHED, RECOVERY, PENDING, RUNNING], True),
        # a waiting run marked Crashed (its last heartbeat raced its deferral): no crash of an
        # execution, not counted
        ([SCHEDULED, RUNNING, DEFERRED, CRASHED, RECOVERY, PENDING, RUNNING], False),
        ([SCHEDULED, CRASHED, RECOVERY, PENDING, RUNNING], False),
        ([SCHEDULED], False),
    ],
)
def test_resumed_after_crash_reads_the_current_execution_only(
    steps: list[tuple[StateType, str]], resumed: bool
) -> None:
    history = _history(*steps)
    assert resumed_after_crash(history) is resumed
    assert resumed_after_crash(list(reversed(history))) is resumed  # order of the API's answer


def test_an_old_checkpoint_loads_with_no_crashes() -> None:
    saved = {"turns": [], "states": {}, "synced": {}, "on_fallback": False, "progress": None}
    assert RunCheckpoint.model_validate(saved).crash_resumptions == 0


def test_a_holder_of_the_run_starts_with_its_prefix_and_no_other_runs_do() -> None:
    run = "6c1f0f3e-7e0a-4d5b-9d9e-0a1b2c3d4e5f"
    assert f"flow-run {run} turn 12".startswith(holder_prefix(run))
    assert not f"flow-run {run}0 turn 1".startswith(holder_prefix(run))


def test_the_automations_use_the_flows_names() -> None:
    """deployments/automations.py may not import the flows (the CLI imports it): its copies of
    the names the flows use must stay equal."""
    from flows.agent_run import agent_run

    assert agent_run.name == automations.FLOW_NAME
    assert automations.AWAITING_RATE_LIMIT == AWAITING_RATE_LIMIT
    assert automations.AWAITING_CRASH_RECOVERY == AWAITING_CRASH_RECOVERY
    assert automations.HEARTBEAT_FREQUENCY_S == HEARTBEAT_FREQUENCY_S


def test_the_crash_automation_waits_for_a_deferral_and_the_resume_one_reschedules() -> None:
    crash, resume, pool, key = automations.keyrelay_automations(automations.AutomationOptions())
    assert isinstance(crash.trigger, EventTrigger)
    assert crash.trigger.posture == Posture.Proactive
    assert crash.trigger.within == timedelta(seconds=automations.CRASH_AFTER_S)
    # a deferred run gives its process back on purpose: not a crash
    assert f"prefect.flow-run.{AWAITING_RATE_LIMIT}" in crash.trigger.expect
    # Running comes before an execution's first heartbeat: it must not end the silence
    assert "prefect.flow-run.Running" not in crash.trigger.expect
    (to_scheduled,) = resume.actions
    assert isinstance(to_scheduled, ChangeFlowRunState)
    assert (to_scheduled.state, to_scheduled.name) == (StateType.SCHEDULED, AWAITING_CRASH_RECOVERY)
    assert [type(a) for a in pool.actions + key.actions] == [DoNothing, DoNothing]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"crash_after_s": 45}, "crash_after_s must be at least 60"),
        ({"exhausted_for_s": 5}, "exhausted_for_s must be at least 10"),
    ],
)
def test_options_that_would_misfire_are_refused(options: dict[str, float], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        automations.AutomationOptions(**options)  # type: ignore[arg-type]
