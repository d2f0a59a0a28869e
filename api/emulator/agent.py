"""The emulator playing an agent: which move of the script a request gets, from the request alone.

The move depends only on the conversation the request carries, never on earlier requests, so a
conversation resumed elsewhere (another key, another machine) continues where it stopped: with
`n` `tool_result` blocks in `messages`, the reply is step `n` of the script as a `tool_use`, or
the final text once `n >= len(steps)`. The script applies only to requests that declare tools,
and a step only when its tool is among them; otherwise the reply stays the plain text one.

Tool-use ids are `toolu_emu_<conversation>_<step>`: `<conversation>` is the digest of the first
user turn, so the same conversation gets the same ids on every key and every retry. An id must
also be new to its conversation: the claude CLI drops a `tool_use` whose id it has seen before
and then, with `stop_reason: tool_use` and no call left, asks again forever (CLAUDE_CLI_NOTES.md).
A conversation repaired by the client (a call and its result removed) can bring the step number
back to an id already used; then `_2`, `_3`, ... is appended.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from api.emulator.agent_script import AgentScript, render
from api.emulator.replies import (
    Reply,
    ToolCall,
    called_tool_ids,
    conversation_digest,
    estimate_tokens,
    text_tokens,
    tool_results,
    visible_turns,
)

__all__ = ["declared_tools", "next_move", "tool_use_id"]


def declared_tools(tools: object) -> set[str]:
    """Names of the tools a request declares (its `tools` list)."""
    if not isinstance(tools, list):
        return set()
    return {t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)}


def tool_use_id(messages: list[Any], *, step: int) -> str:
    turns = visible_turns(messages)
    first_user = next((i for i, (role, _) in enumerate(turns) if role == "user"), len(turns))
    base = f"toolu_emu_{conversation_digest(turns[: first_user + 1])}_{step}"
    used, candidate, attempt = set(called_tool_ids(messages)), base, 1
    while candidate in used:
        attempt += 1
        candidate = f"{base}_{attempt}"
    return candidate


def next_move(script: AgentScript, *, reply: Reply, messages: list[Any], tools: object) -> Reply:
    """`reply` as the script's next move for this conversation (unchanged if it does not apply)."""
    declared = declared_tools(tools)
    if not declared:
        return reply
    done, total = len(tool_results(messages)), len(script.steps)
    if done >= total:
        text = render(script.final_text, step=total, steps=total)
        return dataclasses.replace(
            reply, text=text, output_tokens=text_tokens(text), stop_reason="end_turn"
        )
    step = script.steps[done]
    if step.tool not in declared:
        return reply
    number = done + 1
    call = ToolCall(
        step=number,
        tool_use_id=tool_use_id(messages, step=number),
        name=step.tool,
        input=render(step.input, step=number, steps=total),
    )
    text = render(step.text, step=number, steps=total) if step.text else ""
    tokens = estimate_tokens(call.input) + (text_tokens(text) if text else 0)
    return dataclasses.replace(
        reply, text=text, output_tokens=tokens, stop_reason="tool_use", tool_call=call
    )
