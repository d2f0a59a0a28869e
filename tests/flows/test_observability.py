"""What the Prefect UI shows of a rotation: events per audit row, a masked pool artifact."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventRelatedFilter,
)

from api.emulator import FaultRule
from flows.agent_run import agent_run
from tests.flows.support import FlowEnv, add_key

pytestmark = pytest.mark.anyio


async def test_rotation_shows_up_as_events_and_a_pool_artifact(flow_env: FlowEnv) -> None:
    a = add_key(flow_env, "a", priority=1)
    b = add_key(flow_env, "b", priority=2)
    flow_env.emulator.admin.set_faults(
        [FaultRule(key_prefix="sk-ant-api03-a-", kind="missing_headers", times=1)]
    )
    state = await agent_run(prompt="go", agent="anthropic", steps=2, return_state=True)
    run_id = state.state_details.flow_run_id
    assert state.is_completed()

    wanted = {
        ("keyrelay.key_rate_limited", f"keyrelay.key.{a}"),
        ("keyrelay.key_rotated", f"keyrelay.key.{b}"),
    }
    query = EventFilter(
        event=EventNameFilter(prefix=["keyrelay."]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{run_id}"]),
        occurred=EventOccurredFilter(since=datetime.now(UTC) - timedelta(minutes=5)),
    )
    deadline = time.monotonic() + 20
    async with get_client() as client:
        while True:
            events = (await client.read_events(filter=query, limit=50)).events
            seen = {(e.event, e.resource.id) for e in events}
            if wanted <= seen or time.monotonic() > deadline:
                break
            await anyio.sleep(0.3)
        assert wanted <= seen
        limited = next(e for e in events if e.event == "keyrelay.key_rate_limited")
        assert limited.payload["kind"] == "rate_limit" and limited.payload["cooling_until"]
        assert any(r.role == "flow-run" for r in limited.related)

        # the artifact key is shared by every run of the session: ask for this run's own
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["keyrelay-pool-anthropic"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            )
        )
    assert artifacts, "no pool artifact"
    rows = (
        json.loads(artifacts[0].data) if isinstance(artifacts[0].data, str) else artifacts[0].data
    )
    by_id = {row["id"]: row for row in rows}
    assert by_id[a]["state"] == "cooling"
    assert by_id[a]["masked"] == "sk-ant-...CRET"  # first 7 and last 4 characters only
    assert by_id[b]["state"] == "available"
