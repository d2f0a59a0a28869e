"""A flow for tests/flows/test_deferral.py, served by `python -m tests.flows.lingering_flow`: it
parks its run through flows/deferral.py and then takes seconds to exit (an atexit hook), so a
`serve` process stopped in between finds the flow-run process still alive. With
`sigterm_while_parking` the process also gets a SIGTERM of its own the moment the server has
accepted the Scheduled state, before the deferral is done (what `systemctl stop` does to every
process of the service, at the worst time)."""

from __future__ import annotations

import atexit
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import flow, serve
from prefect.deployments.runner import EntrypointType
from prefect.runtime import flow_run

from flows import deferral

DEPLOYMENT = "parks-and-lingers/test"


@flow(name="parks-and-lingers")
async def parks_and_lingers(linger_s: float = 8.0, sigterm_while_parking: bool = False) -> None:
    atexit.register(time.sleep, linger_s)
    if sigterm_while_parking:
        accept = deferral.propose_state

        async def accept_then_sigterm(*args: Any, **kwargs: Any) -> Any:
            state = await accept(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            return state

        deferral.propose_state = accept_then_sigterm  # type: ignore[assignment]
    until = datetime.now(UTC) + timedelta(minutes=10)
    await deferral.defer_flow_run(UUID(flow_run.id), until=until, message="every key spent (test)")


if __name__ == "__main__":
    from tests.flows.lingering_flow import parks_and_lingers as importable  # not __main__'s

    deployment = importable.to_deployment(name="test", entrypoint_type=EntrypointType.MODULE_PATH)
    serve(deployment, query_seconds=1)  # type: ignore[arg-type]
