"""Exhaustion policy, fallback and concurrency of agent-run, in-process."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from api.emulator import FaultRule, LimitRule
from flows.agent_run import agent_run
from flows.errors import RunFailed
from tests.flows.support import FlowEnv, add_key

pytestmark = pytest.mark.anyio


async def test_reset_beyond_max_wait_fails_naming_keys_and_resets(flow_env: FlowEnv) -> None:
    add_key(flow_env, "a")
    flow_env.store.update_config(inline_wait_max_s=1, max_wait_s=5)
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-a-", requests=1, window_s=120)]
    )
    with pytest.raises(RunFailed) as failed:
        await agent_run(prompt="go", agent="anthropic", steps=2)
    message = str(failed.value)
    assert "beyond max_wait_s=5" in message
    assert "key 1 (a): limited until" in message and "requests 0 left" in message
    exhausted = flow_env.store.audit_events(type="pool_exhausted")
    assert len(exhausted) == 1 and exhausted[0].details["provider"] == "anthropic"


async def test_auto_wait_off_fails_at_once(flow_env: FlowEnv) -> None:
    add_key(flow_env, "a")
    flow_env.store.update_config(auto_wait=False, inline_wait_max_s=30)
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-a-", requests=1, window_s=10)]
    )
    with pytest.raises(RunFailed, match="auto_wait is off"):
        await agent_run(prompt="go", agent="anthropic", steps=2)
    # turn 1's answer said 0 requests remain: turn 2 was never sent to a certain refusal
    assert [e.status for e in flow_env.emulator.admin.log()] == [200]


async def test_reset_within_inline_wait_waits_in_process(flow_env: FlowEnv) -> None:
    a = add_key(flow_env, "a")
    flow_env.store.update_config(inline_wait_max_s=10)
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-a-", requests=1, window_s=2)]
    )
    result = await agent_run(prompt="go", agent="anthropic", steps=2)
    assert [t["key_id"] for t in result["turns"]] == [a, a]
    log = flow_env.emulator.admin.log()
    assert [e.status for e in log] == [200, 200]  # waited for the reset, sent nothing before it
    assert log[1].at >= log[0].at + 2  # the window opened by the first request had reset
    assert flow_env.store.audit_events(type="pool_waiting") == []


async def test_request_too_large_fails_the_step_clearly(flow_env: FlowEnv) -> None:
    add_key(flow_env, "a")
    add_key(flow_env, "b")
    flow_env.emulator.admin.set_faults(
        [FaultRule(key_prefix="sk-ant-api03-", kind="request_too_large")]
    )
    with pytest.raises(RunFailed, match="larger than the provider's limit"):
        await agent_run(prompt="go", agent="anthropic")
    assert len(flow_env.emulator.admin.log()) == 1  # no rotation: no key can serve it


async def test_billing_quota_fails_clearly_and_benches_the_key(flow_env: FlowEnv) -> None:
    a = add_key(flow_env, "a", provider="openai")
    flow_env.emulator.admin.set_faults(
        [FaultRule(key_prefix="sk-proj-a-", kind="insufficient_quota")]
    )
    with pytest.raises(RunFailed, match=f"keyrelay keys reset {a}"):
        await agent_run(prompt="go", agent="openai")
    assert flow_env.store.get_key(a).state == "unusable"


def _fallback_setup(flow_env: FlowEnv, *, enabled: bool) -> tuple[int, int]:
    a = add_key(flow_env, "a")
    o = add_key(flow_env, "o", provider="openai")
    flow_env.store.update_config(
        fallback_enabled=enabled,
        fallback_provider="openai",
        no_reset_cooldown_s=1,
        inline_wait_max_s=5,
    )
    # turn 2 on the anthropic key gets a 429 without reset: it cools for 1 s
    flow_env.emulator.admin.set_faults(
        [FaultRule(key_prefix="sk-ant-api03-a-", kind="missing_headers", times=1)]
    )
    flow_env.emulator.admin.set_reply_delay(0.6)
    return a, o


async def test_fallback_serves_while_primary_is_spent_and_hands_back(flow_env: FlowEnv) -> None:
    a, o = _fallback_setup(flow_env, enabled=True)
    # The fault fires on the first anthropic request: turn 1 falls back to openai. Each later
    # turn first asks whether anthropic has a key again; it does once its 1 s cooldown is over
    # (each reply takes 0.6 s, so by turn 3 at the latest).
    result = await agent_run(prompt="one", agent="anthropic", steps=4)
    served = [(t["agent"], t["key_id"]) for t in result["turns"]]
    switch = served.index(("anthropic", a))
    assert 1 <= switch <= 2
    assert served == [("openai", o)] * switch + [("anthropic", a)] * (4 - switch)
    types = [e.type for e in reversed(flow_env.store.audit_events())]
    assert types.count("fallback_started") == 1 and types.count("fallback_ended") == 1
    assert types.index("fallback_started") < types.index("fallback_ended")
    log = [e for e in flow_env.emulator.admin.log() if e.status == 200]
    # every turn, on either provider, carried the whole conversation so far
    assert [e.user_turns for e in log] == [1, 2, 3, 4]
    assert [e.provider for e in log] == ["openai"] * switch + ["anthropic"] * (4 - switch)


async def test_without_fallback_the_run_waits_for_its_provider(flow_env: FlowEnv) -> None:
    a, _ = _fallback_setup(flow_env, enabled=False)
    result = await agent_run(prompt="one", agent="anthropic", steps=2)
    assert [(t["agent"], t["key_id"]) for t in result["turns"]] == [("anthropic", a)] * 2
    assert all(e.provider == "anthropic" for e in flow_env.emulator.admin.log())
    assert not flow_env.store.audit_events(type="fallback_started")


async def test_parallel_runs_never_share_a_single_slot_key(flow_env: FlowEnv) -> None:
    keys = [add_key(flow_env, name) for name in ("a", "b")]
    flow_env.emulator.admin.set_reply_delay(0.4)
    results = await asyncio.gather(
        *(agent_run(prompt=f"run {i}", agent="anthropic", steps=2) for i in range(4))
    )
    assert all(len(r["turns"]) == 2 for r in results)
    spans = defaultdict(list)
    for entry in flow_env.emulator.admin.log():
        assert entry.status == 200 and entry.answered_at is not None
        spans[entry.key_fingerprint].append((entry.at, entry.answered_at))
    assert len(spans) == len(keys)
    for intervals in spans.values():
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end, "one key served two requests at the same moment"
    async with get_client() as client:
        runs = await client.read_flow_runs()
    assert sum(1 for r in runs if r.state_type == StateType.COMPLETED) >= 4
