"""Deterministic replies and token estimates, derived only from the request.

A reply names the number of user turns and a digest of the conversation before the last user
turn, so a test can tell that a resumed conversation carried its earlier turns (and which).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Reply", "conversation_digest", "estimate_tokens", "make_reply", "visible_texts"]

# The claude CLI puts its own context into user messages as `<system-reminder>` text blocks;
# they are not what the user said, so turns and digests ignore them.
_REMINDER = "<system-reminder>"
SNIPPET_CHARS = 40


def estimate_tokens(payload: object) -> int:
    """chars/4 of the canonical JSON: deterministic, and roughly what providers count."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return max(1, math.ceil(len(text) / 4))


def _text_tokens(text: str) -> int:
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


def _turns(messages: list[Any]) -> list[tuple[str, str]]:
    """(role, text) of every user/assistant message with visible text, in order."""
    turns = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            continue
        texts = visible_texts(message.get("content"))
        if texts:
            turns.append((str(message["role"]), "\n".join(texts)))
    return turns


def conversation_digest(turns: list[tuple[str, str]]) -> str:
    """12 hex chars over (role, text) pairs: a test computes it from what it expects was said."""
    canonical = json.dumps(turns, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Reply:
    text: str
    user_turns: int
    prior_digest: str
    last_user_text: str
    output_tokens: int
    stop_reason: str  # end_turn | max_tokens


def make_reply(messages: list[Any], *, max_tokens: int | None) -> Reply:
    turns = _turns(messages)
    user_indexes = [i for i, (role, _) in enumerate(turns) if role == "user"]
    last_user = user_indexes[-1] if user_indexes else len(turns)
    last_text = turns[last_user][1] if user_indexes else ""
    snippet = " ".join(last_text.split())[:SNIPPET_CHARS]
    digest = conversation_digest(turns[:last_user])
    text = f"reply to {digest}: turn {len(user_indexes)}; last user text: {snippet}"
    stop_reason = "end_turn"
    # A client asking for very few tokens (the CLI's quota probe sends max_tokens=1) gets a
    # truncated reply, as from a real model.
    if max_tokens is not None and _text_tokens(text) > max_tokens:
        text, stop_reason = text[: max(1, max_tokens) * 4], "max_tokens"
    return Reply(
        text=text,
        user_turns=len(user_indexes),
        prior_digest=digest,
        last_user_text=snippet,
        output_tokens=_text_tokens(text),
        stop_reason=stop_reason,
    )
