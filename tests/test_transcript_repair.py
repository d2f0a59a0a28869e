"""Cutting an interrupted session back to a point `--resume` can go on from (transcript.py), and
what the resumed turn is told (continuation.py). The transcript shapes are the real CLI's
(api/emulator/CLAUDE_CLI_NOTES.md, "Tool use"); test_claude_code_resume.py runs the real thing."""

from __future__ import annotations

import json
from typing import Any

from flows.continuation import continuation_prompt, interruption
from flows.executors.errors import AgentFailed, ProviderTimeout
from flows.executors.transcript import INTERRUPTED_TOOL, made_progress, repair
from keystore import LeaseLost, RateLimitSignal


def _line(**entry: Any) -> str:
    return json.dumps({"sessionId": "s1", "cwd": "/w", "version": "2.1.332", **entry})


def _call(uuid: str, parent: str, tool_id: str) -> str:
    content = [{"type": "tool_use", "id": tool_id, "name": "Bash", "input": {"command": "x"}}]
    return _line(
        type="assistant",
        uuid=uuid,
        parentUuid=parent,
        message={"role": "assistant", "model": "claude", "content": content},
    )


def _result(uuid: str, parent: str, tool_id: str) -> str:
    content = [{"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}]
    return _line(
        type="user", uuid=uuid, parentUuid=parent, message={"role": "user", "content": content}
    )


PROMPT = _line(
    type="user", uuid="u0", parentUuid=None, message={"role": "user", "content": "do it"}
)
STEP1 = [_call("a1", "u0", "toolu_1"), _result("r1", "a1", "toolu_1")]


def test_a_clean_transcript_is_left_as_it_is() -> None:
    text = "\n".join([PROMPT, *STEP1, _line(type="last-prompt", leafUuid="r1")]) + "\n"
    assert repair(text) == (text, [])


def test_a_call_the_cli_was_killed_in_gets_an_interrupted_result() -> None:
    text = "\n".join([PROMPT, *STEP1, _call("a2", "r1", "toolu_2"), _line(type="atis-latch")])
    repaired, interrupted = repair(text)
    assert interrupted == ["toolu_2"]
    entries = [json.loads(line) for line in repaired.splitlines()]
    added = entries[-1]
    assert added["type"] == "user" and added["parentUuid"] == entries[-2].get("uuid", "a2")
    assert added["sourceToolAssistantUUID"] == "a2" and added["sessionId"] == "s1"
    (block,) = added["message"]["content"]
    assert block == {
        "type": "tool_result",
        "tool_use_id": "toolu_2",
        "is_error": True,
        "content": INTERRUPTED_TOOL,
    }
    assert repair(repaired) == (repaired, [])  # repairing twice changes nothing


def test_parallel_calls_each_get_a_result_and_a_torn_last_line_goes() -> None:
    calls = [_call("a2", "r1", "toolu_2"), _call("a3", "a2", "toolu_3")]
    text = "\n".join([PROMPT, *STEP1, *calls, '{"type":"user","uuid":"half-writ'])
    repaired, interrupted = repair(text)
    assert interrupted == ["toolu_2", "toolu_3"]
    entries = [json.loads(line) for line in repaired.splitlines()]
    answered = [e["message"]["content"][0]["tool_use_id"] for e in entries[-2:]]
    assert answered == ["toolu_2", "toolu_3"]
    assert entries[-1]["parentUuid"] == entries[-2]["uuid"]  # one chain, in order


def test_progress_means_the_model_answered_after_the_checkpoint() -> None:
    before = PROMPT + "\n"
    synthetic = _line(
        type="assistant",
        uuid="e1",
        isApiErrorMessage=True,
        message={"role": "assistant", "model": "<synthetic>", "content": []},
    )
    assert not made_progress(before + synthetic + "\n", since=before)
    assert made_progress(before + STEP1[0] + "\n", since=before)


def test_the_resumed_turn_is_told_what_happened_and_what_the_task_was() -> None:
    text = continuation_prompt("Fix the failing tests.", "the API key hit a rate limit", 1)
    assert "interrupted before it finished (the API key hit a rate limit)" in text
    assert "1 tool call(s) were cut off" in text and "Do not repeat work that is done" in text
    assert text.endswith("The task of this turn:\n\nFix the failing tests.")
    assert text != "Continue."
    signal = RateLimitSignal(kind="usage_limit", resets_at=None, retryable=True, source="x")
    assert interruption(signal) == "the subscription reached its usage limit"
    assert interruption(LeaseLost("l")) == "the worker lost its hold on the API key"
    assert interruption(ProviderTimeout("t", agent="claude-code")) == "the turn ran out of time"
    crashed = AgentFailed("c", agent="claude-code")
    assert interruption(crashed) == "the agent process stopped unexpectedly"
