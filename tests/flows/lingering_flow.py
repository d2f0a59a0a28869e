"""A flow for tests/flows/test_deferral.py, served by `python -m tests.flows.lingering_flow`: it
parks its run through flows/deferral.py and then takes seconds to exit (an atexit hook), so a
`serve` process stopped in between finds the flow-run process still alive."""

from __future__ import annotations

import atexit
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect import flow, serve
from prefect.deployments.runner import EntrypointType
from prefect.runtime import flow_run

from flows.deferral import defer_flow_run

DEPLOYMENT = "parks-and-lingers/test"


@flow(name="parks-and-lingers")
async def parks_and_lingers(linger_s: float = 8.0) -> None:
    atexit.register(time.sleep, linger_s)
    until = datetime.now(UTC) + timedelta(minutes=10)
    await defer_flow_run(UUID(flow_run.id), until=until, message="every key spent (test)")


if __name__ == "__main__":
    from tests.flows.lingering_flow import parks_and_lingers as importable  # not __main__'s

    deployment = importable.to_deployment(name="test", entrypoint_type=EntrypointType.MODULE_PATH)
    serve(deployment, query_seconds=1)  # type: ignore[arg-type]
