"""The checkpoint of the HTTP agents (`anthropic`, `openai`): the whole conversation so far.

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

Both agents share this shape, so a conversation can continue on the other provider (fallback).
A turn sends `messages + [the new prompt]` and returns `messages + [prompt, reply]`; it never
changes the list it was given, so a failed turn retried from the same checkpoint sends the prompt
once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from keystore.errors import InvalidInput

__all__ = ["Message", "conversation_from", "extended"]

Message = dict[str, Any]
_ROLES = ("user", "assistant")


def conversation_from(checkpoint: Mapping[str, Any] | None) -> list[Message]:
    """A private copy of the checkpoint's messages, checked; [] for no checkpoint."""
    if checkpoint is None:
        return []
    if not isinstance(checkpoint, Mapping):
        raise InvalidInput("checkpoint: must be a JSON object with `messages`")
    messages = checkpoint.get("messages")
    if not isinstance(messages, list):
        raise InvalidInput("checkpoint.messages: must be a list")
    for index, message in enumerate(messages):
        where = f"checkpoint.messages[{index}]"
        if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
            raise InvalidInput(f"{where}.role: must be 'user' or 'assistant'")
        if not isinstance(message.get("content"), str | list):
            raise InvalidInput(f"{where}.content: must be a string or a list of blocks")
    try:
        # A deep copy that also proves the checkpoint is JSON (what Prefect will persist).
        copied: list[Message] = json.loads(json.dumps(messages))
    except (TypeError, ValueError):
        raise InvalidInput("checkpoint.messages: must be JSON-serializable") from None
    return copied


def extended(history: list[Message], *, prompt: str, reply: str) -> dict[str, Any]:
    """The next checkpoint: `history` followed by this turn."""
    return {
        "messages": [
            *history,
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": reply},
        ]
    }
