"""`keyrelay run --wait`: follow a run as it goes, one line per attempt, a countdown while it waits.

    run 7c1e...  Running
    turn 1: Completed: served on key 3 (alpha)
    turn 2: Rotated: key 3: rate_limit until 12:00:41 (retry-after)
    turn 2: Completed: served on key 4 (beta)
    turn 3: Deferring: every anthropic key is spent (all_cooling): ...
    run 7c1e...  AwaitingRateLimit until 12:04:10 (3:52)      <- a live countdown on a terminal
    run 7c1e...  Running (resumed)
    turn 3: Completed: served on key 3 (alpha)
    run 7c1e...  Completed

Everything comes from the Prefect API (the flow run's state and its attempts, one task run each,
whose state names and messages say what happened); nothing is imported from the flows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.live import Live
from rich.text import Text

__all__ = ["follow_run"]

POLL_S = 1.0


def _countdown(until: datetime | None) -> str:
    if until is None:
        return ""
    left = max(0, int((until - datetime.now(UTC)).total_seconds()))
    minutes, seconds = divmod(left, 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
    return f" until {until.astimezone(UTC):%H:%M:%S} UTC ({clock})"


def follow_run(
    run_id: UUID, *, console: Console, sleep: Callable[[float], None] = time.sleep
) -> Any:
    """Print the run's progress until it ends; returns the final FlowRun."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    shown: set[UUID] = set()
    last_state: str | None = None
    runs_before = 0
    with (
        get_client(sync_client=True) as client,
        Live(Text(""), console=console, transient=True, auto_refresh=False) as live,
    ):
        while True:
            run = client.read_flow_run(run_id)
            attempts = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            )
            for attempt in attempts:
                if attempt.id in shown or attempt.state is None or not attempt.state.is_final():
                    continue
                shown.add(attempt.id)
                message = f": {attempt.state.message}" if attempt.state.message else ""
                console.print(f"{attempt.name}: {attempt.state.name}{message}")
            state = run.state
            name = state.name if state is not None else "?"
            waiting = state is not None and state.is_scheduled() and run.run_count > 0
            if name != last_state:
                resumed = (
                    " (resumed)" if name == "Running" and run.run_count > runs_before > 0 else ""
                )
                until = _countdown(run.next_scheduled_start_time) if waiting else ""
                console.print(f"run {run.name}  {name}{until}{resumed}")
                last_state, runs_before = name, max(runs_before, run.run_count)
            if waiting:
                live.update(Text(f"waiting for a key{_countdown(run.next_scheduled_start_time)}"))
            else:
                live.update(Text(""))
            live.refresh()
            if state is not None and state.is_final():
                return run
            sleep(POLL_S)
