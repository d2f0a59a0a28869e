"""Deterministic replies and token estimates, derived only from the request.

A reply names the number of user turns and a digest of the conversation before the last user
turn, so a test can tell that a resumed conversation carried its earlier turns (and which). When
an agent script is in force, `agent.next_move` may turn the reply into a tool call (`ToolCall`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Reply",
    "ToolCall",
    "ToolResult",
    "conversation_digest",
    "estimate_tokens",
    "make_reply",
    "text_tokens",
    "tool_results",
    "visible_texts",
    "visible_turns",
]

# The claude CLI puts its own context into user messages as `<system-reminder>` text blocks;
# they are not what the user said, so turns and digests ignore them.
_REMINDER = "<system-reminder>"
SNIPPET_CHARS = 40


def estimate_tokens(payload: object) -> int:
    """chars/4 of the canonical JSON: deterministic, and roughly what providers count."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return max(1, math.ceil(len(text) / 4))


def text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def visible_texts(content: Any) -> list[str]:
    """The text a person wrote or read in one message's content (string or content blocks)."""
    if isinstance(content, str):
        return [content] if not content.startswith(_REMINDER) else []
    texts = []
    for block in content if isinstance(content, list) else []:
        if isinstance(block, dict) and block.get("type") == "text":
            text = block.get("text")
            if isinstance(text, str) and not text.lstrip().startswith(_REMINDER):
                texts.append(text)
    return texts


def visible_turns(messages: list[Any]) -> list[tuple[str, str]]:
    """(role, text) of every user/assistant message with visible text, in order."""
    turns = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            continue
        texts = visible_texts(message.get("content"))
        if texts:
            turns.append((str(message["role"]), "\n".join(texts)))
    return turns


@dataclass(frozen=True)
class ToolResult:
    tool_use_id: str
    is_error: bool


def tool_results(messages: list[Any]) -> list[ToolResult]:
    """Every `tool_result` block of the conversation, in order (the client's answers to calls)."""
    results = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                results.append(
                    ToolResult(str(block.get("tool_use_id")), block.get("is_error") is True)
                )
    return results


def conversation_digest(turns: list[tuple[str, str]]) -> str:
    """12 hex chars over (role, text) pairs: a test computes it from what it expects was said."""
    canonical = json.dumps(turns, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ToolCall:
    """A `tool_use` block the reply ends with: step `step` (1-based) of the agent script."""

    step: int
    tool_use_id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    text: str  # may be "" before a tool call (then no text block is sent)
    user_turns: int
    prior_digest: str
    last_user_text: str
    output_tokens: int
    stop_reason: str  # end_turn | max_tokens | tool_use
    tool_call: ToolCall | None = None


def make_reply(messages: list[Any], *, max_tokens: int | None) -> Reply:
    turns = visible_turns(messages)
    user_indexes = [i for i, (role, _) in enumerate(turns) if role == "user"]
    last_user = user_indexes[-1] if user_indexes else len(turns)
    last_text = turns[last_user][1] if user_indexes else ""
    snippet = " ".join(last_text.split())[:SNIPPET_CHARS]
    digest = conversation_digest(turns[:last_user])
    text = f"reply to {digest}: turn {len(user_indexes)}; last user text: {snippet}"
    stop_reason = "end_turn"
    # A client asking for very few tokens (the CLI's quota probe sends max_tokens=1) gets a
    # truncated reply, as from a real model.
    if max_tokens is not None and text_tokens(text) > max_tokens:
        text, stop_reason = text[: max(1, max_tokens) * 4], "max_tokens"
    return Reply(
        text=text,
        user_turns=len(user_indexes),
        prior_digest=digest,
        last_user_text=snippet,
        output_tokens=text_tokens(text),
        stop_reason=stop_reason,
    )
