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
    "called_tool_ids",
    "conversation_digest",
    "dangling_tool_uses",
    "estimate_tokens",
    "make_reply",
    "plain_text_prompt",
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


def _plain(content: Any) -> Any:
    if isinstance(content, list) and content and all(_is_text_block(b) for b in content):
        return "".join(block["text"] for block in content)
    return content


def _is_text_block(block: Any) -> bool:
    return (
        isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    )


def plain_text_prompt(prompt_parts: dict[str, Any]) -> dict[str, Any]:
    """The prompt with every content made only of text blocks written as its text: a provider
    counts the words, not the JSON around them. (LiteLLM sends each message as a list of text
    blocks, the official SDKs as a string; the same conversation must cost the same.)"""
    plain = dict(prompt_parts)
    if "system" in plain:
        plain["system"] = _plain(plain["system"])
    messages = plain.get("messages")
    if isinstance(messages, list):
        plain["messages"] = [
            {**m, "content": _plain(m.get("content"))}
            if isinstance(m, dict) and "content" in m
            else m
            for m in messages
        ]
    return plain


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


def _blocks(message: Any, kind: str) -> list[dict[str, Any]]:
    content = message.get("content") if isinstance(message, dict) else None
    blocks = content if isinstance(content, list) else []
    return [b for b in blocks if isinstance(b, dict) and b.get("type") == kind]


def tool_results(messages: list[Any]) -> list[ToolResult]:
    """Every `tool_result` block of the conversation, in order (the client's answers to calls)."""
    return [
        ToolResult(str(block.get("tool_use_id")), block.get("is_error") is True)
        for message in messages
        for block in _blocks(message, "tool_result")
    ]


def called_tool_ids(messages: list[Any]) -> list[str]:
    """The ids of every `tool_use` block of the conversation, in order."""
    return [str(b.get("id")) for message in messages for b in _blocks(message, "tool_use")]


def dangling_tool_uses(messages: list[Any]) -> tuple[int, list[str]] | None:
    """The first assistant message whose `tool_use` ids are not all answered by `tool_result`
    blocks in the next message (the real API refuses such a conversation with a 400), as
    (its index, the unanswered ids); None when every call has its result. The CLI's own
    `role: "system"` messages are skipped when looking for the next message."""
    spoken = [(i, m) for i, m in enumerate(messages) if not _is_system(m)]
    for position, (index, message) in enumerate(spoken):
        calls = [str(b.get("id")) for b in _blocks(message, "tool_use")]
        if not calls:
            continue
        following = spoken[position + 1][1] if position + 1 < len(spoken) else None
        answered = {str(b.get("tool_use_id")) for b in _blocks(following, "tool_result")}
        missing = [call for call in calls if call not in answered]
        if missing:
            return index, missing
    return None


def _is_system(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "system"


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
