"""An Anthropic Messages reply, as a JSON message or as server-sent events.

Content is a text block, or (an agent move) an optional text block and then a `tool_use` block.
Streamed, a `tool_use` block starts with `input: {}` and its input follows as `input_json_delta`
pieces of `partial_json`, the first one empty, as the real API sends them; `message_delta`
carries the stop reason (`tool_use` for a call).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse, StreamingResponse

from api.emulator.exchange import Exchange
from api.emulator.replies import Reply
from api.emulator.windows import Usage

__all__ = ["message_response", "stream_response", "stream_with_error_response"]

_DELTA_CHARS = 24  # text and tool input are streamed in pieces of this size, like a model's


def _content(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.text or reply.tool_call is None:
        blocks.append({"type": "text", "text": reply.text})
    if reply.tool_call is not None:
        call = reply.tool_call
        blocks.append(
            {"type": "tool_use", "id": call.tool_use_id, "name": call.name, "input": call.input}
        )
    return blocks


def _message_object(exchange: Exchange, usage: Usage, *, streaming: bool) -> dict[str, Any]:
    assert exchange.reply is not None
    body = exchange.body or {}
    return {
        "id": "msg_" + exchange.request_id.removeprefix("req_"),
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [] if streaming else _content(exchange.reply),
        "stop_reason": None if streaming else exchange.reply.stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": 1 if streaming else usage.output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def message_response(exchange: Exchange, usage: Usage) -> Response:
    return JSONResponse(_message_object(exchange, usage, streaming=False))


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _pieces(text: str) -> Iterator[str]:
    for offset in range(0, len(text), _DELTA_CHARS):
        yield text[offset : offset + _DELTA_CHARS]


def _block_events(index: int, block: dict[str, Any]) -> Iterator[str]:
    """content_block_start, its deltas, content_block_stop."""
    if block["type"] == "tool_use":
        start = block | {"input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
            {"type": "input_json_delta", "partial_json": piece}
            for piece in _pieces(json.dumps(block["input"], separators=(",", ":")))
        ]
    else:
        start = block | {"text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block["text"])]
    yield _sse(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": start},
    )
    if index == 0:
        yield _sse("ping", {"type": "ping"})
    for delta in deltas:
        yield _sse(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )
    yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})


def stream_response(exchange: Exchange, usage: Usage) -> Response:
    assert exchange.reply is not None
    reply = exchange.reply
    start = _message_object(exchange, usage, streaming=True)

    def events() -> Iterator[str]:
        yield _sse("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(_content(reply)):
            yield from _block_events(index, block)
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage.output_tokens},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


def stream_with_error_response(exchange: Exchange, usage: Usage) -> Response:
    """HTTP 200 whose stream breaks off with `event: error` overloaded (as the real API does)."""
    start = _message_object(exchange, usage, streaming=True)
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}

    def events() -> Iterator[str]:
        yield _sse("message_start", {"type": "message_start", "message": start})
        yield _sse("ping", {"type": "ping"})
        yield _sse("error", error)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )
