"""OpenAI Chat Completions front-end: `/v1/chat/completions` (JSON and `data:` SSE chunks)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from api.emulator.exchange import Exchange
from api.emulator.headers import openai_rate_limit_headers
from api.emulator.openai_errors import (
    error_response,
    fault_response,
    invalid_key_response,
    limited_response,
)
from api.emulator.state import EmulatorState
from api.emulator.windows import Usage

__all__ = ["openai_router"]

_DELTA_CHARS = 24


def openai_router(state: EmulatorState) -> APIRouter:
    router = APIRouter(tags=["openai"])

    @router.post("/v1/chat/completions")
    async def create_chat_completion(request: Request) -> Response:
        """OpenAI Chat Completions (`stream: true` answers with `data:` chunks and `[DONE]`)."""
        exchange = await Exchange.open(state, request, provider="openai")
        credential = exchange.credential
        if credential is None or not state.accepts(credential):
            return exchange.finish(invalid_key_response(exchange), error_type="invalid_api_key")
        body = exchange.body
        if body is None or not isinstance(body.get("model"), str) or not exchange.messages:
            message = "you must provide a model parameter and a non-empty messages array"
            invalid = error_response(400, message, error_type="invalid_request_error", code=None)
            return exchange.finish(invalid, error_type="invalid_request_error")
        usage = exchange.prepare_reply(prompt_parts={k: body.get(k) for k in ("messages", "tools")})
        verdict = state.admit(provider="openai", credential=credential, usage=usage)
        response: Response
        if verdict.kind == "admitted":
            response = _stream(exchange, usage) if exchange.stream else _completion(exchange, usage)
            if verdict.decision is not None:
                states = verdict.decision.states
                response.headers.update(openai_rate_limit_headers(states, now=exchange.now))
            return exchange.finish(response, served=usage)
        if verdict.kind == "fault" and verdict.fault is not None:
            exchange.fault = verdict.fault.kind
            response = fault_response(exchange, verdict.fault, usage=usage)
            return exchange.finish(response, error_type="fault")
        response = limited_response(exchange, verdict, usage=usage)
        return exchange.finish(response, error_type=verdict.kind)

    return router


def _finish_reason(exchange: Exchange) -> str:
    assert exchange.reply is not None
    return "length" if exchange.reply.stop_reason == "max_tokens" else "stop"


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.tokens,
    }


def _base(exchange: Exchange, *, object_type: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + exchange.request_id.removeprefix("req_"),
        "object": object_type,
        "created": int(exchange.now),
        "model": (exchange.body or {}).get("model"),
        "system_fingerprint": None,
    }


def _completion(exchange: Exchange, usage: Usage) -> Response:
    assert exchange.reply is not None
    message = {"role": "assistant", "content": exchange.reply.text, "refusal": None}
    body = _base(exchange, object_type="chat.completion") | {
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(exchange),
            }
        ],
        "usage": _usage(usage),
    }
    return JSONResponse(body)


def _stream(exchange: Exchange, usage: Usage) -> Response:
    assert exchange.reply is not None
    text = exchange.reply.text
    base = _base(exchange, object_type="chat.completion.chunk")
    options = (exchange.body or {}).get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        payload = base | {"choices": [choice]}
        if include_usage:
            payload["usage"] = None
        return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"

    def events() -> Iterator[str]:
        yield chunk({"role": "assistant", "content": "", "refusal": None}, None)
        for offset in range(0, len(text), _DELTA_CHARS):
            yield chunk({"content": text[offset : offset + _DELTA_CHARS]}, None)
        yield chunk({}, _finish_reason(exchange))
        if include_usage:
            final = base | {"choices": [], "usage": _usage(usage)}
            yield f"data: {json.dumps(final, separators=(',', ':'))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
