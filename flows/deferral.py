"""Give the worker back: the running flow run reschedules itself for the reset and exits.

The one module that leans on Prefect internals (verified on Prefect 3.9.1, pinned to <3.10; the
tests in tests/flows/test_deferral.py fail loudly if an upgrade changes any of this):

1. Clear the run's `infrastructure_pid` with a raw PATCH. A process worker sets it; left set, a
   later cancel of the waiting run is accepted as Cancelling and sticks there (until the server's
   cancellation timeout, or forever on an ephemeral server). `client.update_flow_run(...,
   infrastructure_pid=None)` silently sends nothing, hence the raw request.
2. Propose `Scheduled(name="AwaitingRateLimit", scheduled_time=..., message=...)` for the run
   itself. The server accepts Running -> Scheduled; each resumption increments `run_count`.
3. Raise `prefect.exceptions.Pause`: the engine keeps the state we set and exits its process with
   code 0, so `serve()` / the worker see no crash and pick the same run up at the scheduled time.
   (Returning would overwrite the state with Completed, raising with Failed, SystemExit with
   Crashed.) The engine logs "Finished in state AwaitingRateLimit" at ERROR level: cosmetic.
4. Before raising, report the attempt as concluded on the runner's control channel, as the
   engine itself does for a final or Paused state (`report_engine_outcome`). A runner or process
   worker that holds that receipt treats the process as done whatever its exit code, and a
   runner shutting down does not cancel it: without it, `serve` or a worker stopped while the
   process is still exiting would mark the parked run Cancelled or Crashed. A process started
   without a control channel (no supervisor) ignores the report.
5. A SIGTERM sent straight to the process while it parks (`systemctl stop` or `docker stop`
   signal every process of the service, not only `serve`) is held until the server has answered:
   Prefect's own handler would crash the run in the middle of its Scheduled state. Once the run
   is parked the signal is dropped (the process is leaving anyway, and the runner holds the
   receipt); if the deferral failed it is delivered again.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn
from uuid import UUID

from prefect._internal.attempt_control import EngineOutcomeReceipt
from prefect._internal.control_listener import report_engine_outcome
from prefect.client.orchestration import get_client
from prefect.exceptions import Pause
from prefect.states import Scheduled
from prefect.utilities.engine import propose_state

from keystore import KeyrelayError

__all__ = ["AWAITING_RATE_LIMIT", "DeferralRejected", "defer_flow_run"]

AWAITING_RATE_LIMIT = "AwaitingRateLimit"


class DeferralRejected(KeyrelayError):
    """The server did not accept the Scheduled state (the run stays where it was)."""


async def defer_flow_run(flow_run_id: UUID, *, until: datetime, message: str) -> NoReturn:
    """Reschedule the current flow run to `until` and leave the engine. Never returns.

    Call it from the flow body (not from a task), and only for a run that a deployment's
    `serve()` process or worker will pick up again."""
    if until.tzinfo is None:
        raise ValueError("until must be timezone-aware")
    with _sigterm_held() as held:
        async with get_client() as client:
            await client.request(
                "PATCH",
                "/flow_runs/{id}",
                path_params={"id": flow_run_id},
                json={"infrastructure_pid": None},
            )
            state = await propose_state(
                client,
                Scheduled(scheduled_time=until, name=AWAITING_RATE_LIMIT, message=message),
                flow_run_id=flow_run_id,
            )
        if not state.is_scheduled():
            raise DeferralRejected(f"the server kept the run {state.type.value}: {state.message}")
        held.parked = True
    assert state.id is not None and state.name is not None  # the server's accepted state
    report_engine_outcome(
        EngineOutcomeReceipt.state_reported(
            state_id=state.id, state_type=state.type.value, state_name=state.name
        )
    )
    raise Pause(state=state)


@dataclass
class _Held:
    parked: bool = False
    signalled: bool = False


@contextlib.contextmanager
def _sigterm_held() -> Iterator[_Held]:
    """Hold a SIGTERM that arrives while the run parks (see point 5 of the module docstring):
    once parked, it is dropped and SIGTERM stays ignored (Prefect restores its own handler when
    the engine ends); otherwise it is delivered again on the way out."""
    held = _Held()

    def hold(signum: int, frame: object) -> None:
        held.signalled = True

    try:
        previous = signal.signal(signal.SIGTERM, hold)
    except ValueError:  # not the main thread: nothing to hold
        yield held
        return
    try:
        yield held
    finally:
        if held.parked:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, previous)
            if held.signalled:
                os.kill(os.getpid(), signal.SIGTERM)
