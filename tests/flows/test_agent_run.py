"""The agent-run flow in-process against the Prefect test server and the emulator."""

from __future__ import annotations

import pytest

from api.emulator import FaultRule, LimitRule
from flows.agent_run import agent_run
from tests.flows.support import FlowEnv, add_key

pytestmark = pytest.mark.anyio


async def test_a_three_turn_conversation_completes(flow_env: FlowEnv) -> None:
    key = add_key(flow_env, "only")
    result = await agent_run(
        prompt="hello there", agent="anthropic", steps=3, followups=["tell me more"]
    )
    replies = [t["reply"] for t in result["turns"]]
    assert len(replies) == 3 and all(t["key_id"] == key for t in result["turns"])
    log = flow_env.emulator.admin.log()
    assert [e.user_turns for e in log] == [1, 2, 3]
    assert [e.last_user_text for e in log] == ["hello there", "tell me more", "Continue."]


async def test_rate_limit_rotates_to_the_next_key(flow_env: FlowEnv) -> None:
    a = add_key(flow_env, "a", priority=1)
    b = add_key(flow_env, "b", priority=2)
    # a 429 on a's first request, which no earlier answer could have foretold
    flow_env.emulator.admin.set_faults(
        [FaultRule(key_prefix="sk-ant-api03-a-", kind="missing_headers", times=1)]
    )
    result = await agent_run(prompt="go", agent="anthropic", steps=2)
    assert [t["key_id"] for t in result["turns"]] == [b, b]  # and b is kept (affinity)
    log = flow_env.emulator.admin.log()
    assert [e.status for e in log] == [429, 200, 200]
    assert [e.user_turns for e in log] == [1, 1, 2]  # the same conversation continued
    rotated = flow_env.store.audit_events(type="key_rotated")
    assert [(e.key_id, e.details["from_key"]) for e in rotated] == [(b, a)]
    cooled = flow_env.store.get_key(a)
    assert cooled.state == "cooling" and cooled.cooling_until is not None
    assert log[1].at < cooled.cooling_until.timestamp()  # retried at once, not after a's reset


async def test_a_key_whose_answer_said_none_remain_is_not_sent_a_certain_refusal(
    flow_env: FlowEnv,
) -> None:
    a = add_key(flow_env, "a", priority=1)
    b = add_key(flow_env, "b", priority=2)
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-", requests=1, window_s=60)]
    )
    result = await agent_run(prompt="go", agent="anthropic", steps=2)
    assert [t["key_id"] for t in result["turns"]] == [a, b]
    assert [e.status for e in flow_env.emulator.admin.log()] == [200, 200]  # no 429 at all
    assert flow_env.store.audit_events(type="key_rate_limited") == []
    (bucket,) = flow_env.store.limits("anthropic")[:1]
    assert (bucket.key_id, bucket.bucket, bucket.remaining) == (a, "requests", 0)
