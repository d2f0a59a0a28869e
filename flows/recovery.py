"""A run whose process died comes back: at its start the flow counts the crash, gives up after
MAX_CRASH_RESUMPTIONS, and frees the leases the dead process held.

How a silent run gets here (the automations are in deployments/automations.py, created by
`keyrelay automations apply`; verified on Prefect 3.9.1 and pinned by
tests/flows/test_crash_recovery.py):

1. A flow run's process sends `prefect.flow-run.heartbeat` every PREFECT_FLOWS_HEARTBEAT_FREQUENCY
   seconds (`keyrelay serve` sets HEARTBEAT_FREQUENCY_S; process workers get it from the
   deployment's job variables). A killed process (its serve or worker killed, its machine gone)
   sends nothing more, and the run stays Running for good.
2. Automation `keyrelay: crash silent runs`: no heartbeat, final state or deferral within
   `crash_after_s` after a heartbeat -> the server accepts Running -> Crashed.
3. Automation `keyrelay: resume crashed runs`: on that Crashed (or the Crashed a run's own engine
   reports when a signal stops it, e.g. after its serve process was killed) -> Scheduled named
   AWAITING_CRASH_RECOVERY, due now; the server accepts it for a run of a deployment, and
   `serve()` or a worker picks the run up like any scheduled run.
4. The flow (`recover_after_crash`, first thing in `agent-run`): its state history says it comes
   back from AWAITING_CRASH_RECOVERY; the checkpoint counts it and names the turns already done,
   so only the turn in flight is sent again.

A process that exits with an error of its own (e.g. an import error before the flow starts) is
not resumed: it would crash again, and before the flow starts nothing counts its crashes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.settings import get_current_settings

from flows.blocking import in_thread
from flows.checkpoint import RunCheckpoint, save_checkpoint
from flows.errors import RunFailed
from keystore import Keystore

__all__ = [
    "AWAITING_CRASH_RECOVERY",
    "HEARTBEAT_FREQUENCY_S",
    "MAX_CRASH_RESUMPTIONS",
    "check_heartbeat",
    "holder_prefix",
    "recover_after_crash",
    "resumed_after_crash",
]

AWAITING_CRASH_RECOVERY = "AwaitingCrashRecovery"
# Prefect 3.9 refuses heartbeats more frequent than every 30 s (settings: ge=30).
HEARTBEAT_FREQUENCY_S = 30
MAX_CRASH_RESUMPTIONS = 3


def holder_prefix(run_id: str) -> str:
    """What every lease holder of the run starts with (flows/steps.py: `flow-run <id> turn <n>`)."""
    return f"flow-run {run_id} "


def resumed_after_crash(states: Sequence[State]) -> bool:
    """Whether the run's current execution was scheduled by the crash-recovery automation after
    an execution died: since its previous execution (or since it was created) it went
    Crashed -> AwaitingCrashRecovery, and was not waiting when it was marked Crashed. (A deferred
    run's last heartbeat can race its deferral and get it marked Crashed while it waits: it then
    starts early, defers again, and that is no crash of an execution.) `states` is the run's
    history, the current Running state included, in any order."""
    ordered = sorted(states, key=lambda s: s.timestamp)
    runs = [i for i, s in enumerate(ordered) if s.type == StateType.RUNNING]
    if not runs:
        return False
    since = runs[-2] + 1 if len(runs) > 1 else 0
    for i in range(max(since, 2), runs[-1]):
        recovery, crash, before = ordered[i], ordered[i - 1], ordered[i - 2]
        if (
            recovery.type == StateType.SCHEDULED
            and recovery.name == AWAITING_CRASH_RECOVERY
            and crash.type == StateType.CRASHED
        ):
            return before.type != StateType.SCHEDULED
    return False


async def recover_after_crash(
    store: Keystore,
    *,
    run_id: str,
    flow_run_id: UUID,
    checkpoint: RunCheckpoint,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> RunCheckpoint:
    """Free the leases a dead execution of this run still holds, and when this execution comes
    back from a crash, count it in the checkpoint (RunFailed past MAX_CRASH_RESUMPTIONS).
    Returns the checkpoint to go on from."""
    freed = await in_thread(store.reclaim_leases_of, holder_prefix(run_id))
    if freed:
        logger.warning("freed %d lease(s) a dead execution of this run still held", freed)
    async with get_client() as client:
        states = await client.read_flow_run_states(flow_run_id)
    if not resumed_after_crash(states):
        return checkpoint
    crashes = checkpoint.crash_resumptions + 1
    if crashes > MAX_CRASH_RESUMPTIONS:
        raise RunFailed(
            f"the run's process died {crashes} times (no heartbeat: its serve or worker was "
            f"killed or its machine went away); it was resumed {MAX_CRASH_RESUMPTIONS} times, "
            f"the most keyrelay allows. {checkpoint.turns_done} turn(s) are done and kept in "
            "its checkpoint; see the logs of the serve/worker processes that ran it"
        )
    checkpoint = checkpoint.model_copy(update={"crash_resumptions": crashes})
    await in_thread(save_checkpoint, store, run_id, checkpoint)
    logger.warning(
        "resuming after a crash (%d of at most %d): %d turn(s) already done, going on with turn %d",
        crashes,
        MAX_CRASH_RESUMPTIONS,
        checkpoint.turns_done,
        checkpoint.turns_done + 1,
    )
    return checkpoint


def check_heartbeat(logger: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
    """Warn when this process's heartbeat is rarer than the crash automation expects: it could
    mark the run Crashed while it runs (and resume it a second time)."""
    frequency_s = get_current_settings().flows.heartbeat_frequency
    if frequency_s is not None and frequency_s <= HEARTBEAT_FREQUENCY_S:
        return
    every = "off" if frequency_s is None else f"every {frequency_s} s"
    logger.warning(
        "this run's heartbeat is %s; keyrelay's crash automation expects one every %d s and "
        "may mark a live run Crashed: set PREFECT_FLOWS_HEARTBEAT_FREQUENCY=%d where the run "
        "executes (keyrelay serve does; see docs/scale-out.md for workers)",
        every,
        HEARTBEAT_FREQUENCY_S,
        HEARTBEAT_FREQUENCY_S,
    )
