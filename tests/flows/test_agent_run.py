"""The agent-run flow in-process against the Prefect test server and the emulator."""

from __future__ import annotations

import pytest

from api.emulator import LimitRule
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
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-a-", requests=1, window_s=60)]
    )
    result = await agent_run(prompt="go", agent="anthropic", steps=2)
    assert [t["key_id"] for t in result["turns"]] == [a, b]
    log = flow_env.emulator.admin.log()
    assert [e.status for e in log] == [200, 429, 200]
    assert log[2].user_turns == 2  # the same conversation continued
    rotated = flow_env.store.audit_events(type="key_rotated")
    assert [(e.key_id, e.details["from_key"]) for e in rotated] == [(b, a)]
    cooled = flow_env.store.get_key(a)
    assert cooled.state == "cooling" and cooled.cooling_until is not None
    assert log[2].at < cooled.cooling_until.timestamp()  # retried at once, not after a's reset
