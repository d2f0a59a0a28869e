"""Outcomes that used to end or stall runs, applied by a real agent-run against the emulator:
a billing quota on one key, an overload, a lost lease, and no state kept between attempts."""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from sqlalchemy import text

from api.emulator import FaultRule
from flows.agent_run import agent_run
from keystore.types import as_utc
from tests.flows.support import FlowEnv, add_key

pytestmark = pytest.mark.anyio


async def test_a_billing_quota_on_one_key_rotates_to_a_healthy_one(flow_env: FlowEnv) -> None:
    a = add_key(flow_env, "a", provider="openai", priority=1)
    b = add_key(flow_env, "b", provider="openai", priority=2)
    flow_env.emulator.admin.set_faults(
        [FaultRule(key_prefix="sk-proj-a-", kind="insufficient_quota")]
    )
    result = await agent_run(prompt="go", agent="openai", steps=2)
    assert [t["key_id"] for t in result["turns"]] == [b, b]
    assert flow_env.store.get_key(a).state == "unusable"
    assert [e.status for e in flow_env.emulator.admin.log()] == [429, 200, 200]
    rotated = flow_env.store.audit_events(type="key_rotated")
    assert [(e.details["from_key"], e.key_id) for e in rotated] == [(a, b)]


async def test_an_overload_backs_off_without_holding_the_lease(flow_env: FlowEnv) -> None:
    """Two runs share one single-slot key; the first run's first request is overloaded. While
    it backs off, the second run must be able to use the key: its request comes between the
    529 and the first run's retry (holding the lease while sleeping would put it last)."""
    add_key(flow_env, "only")
    flow_env.emulator.admin.set_faults(
        [FaultRule(key_prefix="sk-ant-api03-only-", kind="overloaded", times=1)]
    )
    flow_env.emulator.admin.set_reply_delay(0.5)

    async def second() -> dict[str, object]:
        await anyio.to_thread.run_sync(_held_lease, flow_env)  # the first run's call is out
        return await agent_run(prompt="second run", agent="anthropic")

    first, other = await asyncio.gather(agent_run(prompt="first run", agent="anthropic"), second())
    assert len(first["turns"]) == len(other["turns"]) == 1  # type: ignore[arg-type]
    log = flow_env.emulator.admin.log()
    assert [(e.last_user_text, e.status) for e in log] == [
        ("first run", 529),
        ("second run", 200),
        ("first run", 200),
    ]


def _held_lease(flow_env: FlowEnv, timeout_s: float = 20) -> tuple[str, object]:
    deadline = time.monotonic() + timeout_s
    query = text("SELECT lease_id, expires_at FROM lease_slots WHERE lease_id IS NOT NULL")
    while time.monotonic() < deadline:
        with flow_env.store.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is not None:
            return row[0], row[1]
        time.sleep(0.05)
    raise AssertionError("no lease was taken")


async def _attempt_states(run_id: object) -> list[tuple[str, str | None]]:
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    ordered = sorted(runs, key=lambda r: r.expected_start_time or r.created)  # type: ignore[arg-type, return-value]
    return [(r.state_name or "", r.state.message if r.state else None) for r in ordered]


@pytest.mark.slow
async def test_a_lease_reclaimed_under_a_call_cancels_it_and_retries(flow_env: FlowEnv) -> None:
    """A holder cut off long enough for its lease to expire, and its slot taken by someone else:
    the next renewal finds the lease gone, the call is cancelled and the turn is retried."""
    add_key(flow_env, "only")
    flow_env.store.update_config(lease_ttl_s=5)
    flow_env.emulator.admin.set_reply_delay(4)

    def expire_the_first_lease() -> str:
        lease_id, _ = _held_lease(flow_env)
        with flow_env.store.engine.begin() as conn:
            conn.execute(
                text("UPDATE lease_slots SET expires_at = :past WHERE lease_id = :id"),
                {"past": "2000-01-01 00:00:00.000000", "id": lease_id},
            )
        with flow_env.store.lease(provider="anthropic", holder="someone else"):
            time.sleep(1)  # the slot is someone else's now
        return lease_id

    expiring = asyncio.get_running_loop().run_in_executor(None, expire_the_first_lease)
    state = await agent_run(prompt="go", agent="anthropic", return_state=True)
    lost = await expiring
    assert state.is_completed()
    attempts = await _attempt_states(state.state_details.flow_run_id)
    assert [name for name, _ in attempts] == ["Rotated", "Completed"]
    assert f"lease {lost} was lost" in (attempts[0][1] or "")
    reclaimed = flow_env.store.audit_events(type="lease_reclaimed")
    assert [e.details["lease_id"] for e in reclaimed] == [lost]


@contextmanager
def _database_unreachable(flow_env: FlowEnv) -> Iterator[None]:
    """Every keystore write queues behind another process's SQLite write lock."""
    database = flow_env.store.engine.url.database
    with open(f"{database}-writelock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.mark.slow
async def test_a_lease_that_cannot_be_renewed_stops_the_call_before_it_expires(
    flow_env: FlowEnv,
) -> None:
    """Renewals cannot reach the database: shortly before the lease would expire (and its slot
    become anyone's), the call is cancelled; the turn is retried once the database is back."""
    add_key(flow_env, "only")
    flow_env.store.update_config(lease_ttl_s=5)
    flow_env.emulator.admin.set_reply_delay(6)
    released = threading.Event()

    def cut_off_the_database() -> object:
        _, expires_at = _held_lease(flow_env)
        with _database_unreachable(flow_env):
            released.wait(8)
        return expires_at

    cutting = asyncio.get_running_loop().run_in_executor(None, cut_off_the_database)
    try:
        state = await agent_run(prompt="go", agent="anthropic", return_state=True)
    finally:
        released.set()
    expires_at = as_utc(await cutting)  # type: ignore[arg-type]
    assert state.is_completed() and expires_at is not None
    attempts = await _attempt_states(state.state_details.flow_run_id)
    assert [name for name, _ in attempts] == ["Rotated", "Completed"]
    assert "was lost mid-call" in (attempts[0][1] or "")
    async with get_client() as client:
        logs = await client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    stopped = [log.timestamp for log in logs if "stopped the work on key" in log.message]
    # the call was over before its lease expired: no moment with two holders of the slot
    assert len(stopped) == 1 and stopped[0] < expires_at


def test_no_state_is_kept_between_attempts_in_module_globals() -> None:
    """What one attempt tells the next lives in the run's checkpoint. A mutable module-level
    container in the step path would be shared by every run of the process (and leak)."""
    for name in ("flows.steps", "flows.turn_loop", "flows.outcome", "flows.leasing"):
        module = importlib.import_module(name)
        mutable = [
            attr
            for attr, value in vars(module).items()
            if isinstance(value, dict | list | set | bytearray)
            and not attr.startswith("__")
            and not isinstance(value, types.MappingProxyType)
        ]
        assert mutable == [], f"{name} keeps {mutable} at module level"


@pytest.mark.parametrize("agent", ["anthropic", "openai"])
async def test_a_provider_5xx_mid_run_backs_off_and_the_run_goes_on(
    flow_env: FlowEnv, agent: str
) -> None:
    key = add_key(flow_env, "a", provider=agent)
    prefix = "sk-proj-a-" if agent == "openai" else "sk-ant-api03-a-"
    flow_env.emulator.admin.set_faults([FaultRule(key_prefix=prefix, kind="server_error", times=2)])
    result = await agent_run(prompt="go", agent=agent, steps=2, return_state=True)
    assert result.is_completed()
    log = flow_env.emulator.admin.log()
    assert [e.status for e in log] == [500, 500, 200, 200]
    assert [e.user_turns for e in log] == [1, 1, 1, 2]  # the same turn, then the next one
    attempts = await _attempt_states(result.state_details.flow_run_id)
    assert [name for name, _ in attempts] == ["BackingOff", "BackingOff", "Completed", "Completed"]
    assert flow_env.store.get_key(key).state == "available"  # a 5xx is nobody's key's fault
