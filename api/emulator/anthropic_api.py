"""Anthropic Messages API front-end: `/v1/messages` (JSON and SSE) and `count_tokens`.

Complete enough for the official SDK and the real `claude` CLI (see CLAUDE_CLI_NOTES.md): the
CLI posts to `/v1/messages?beta=true` with `stream: true` and tools, and tolerates a plain-text
reply. API keys get `retry-after` + `anthropic-ratelimit-*`; subscription (OAuth)
tokens get the `anthropic-ratelimit-unified-*` family, on successes too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from api.emulator.anthropic_errors import error_response, fault_response, limited_response
from api.emulator.exchange import Exchange
from api.emulator.headers import anthropic_rate_limit_headers, unified_headers
from api.emulator.replies import estimate_tokens
from api.emulator.state import EmulatorState, Verdict
from api.emulator.windows import Usage

__all__ = ["anthropic_router"]

_DELTA_CHARS = 24  # reply text is streamed in pieces of this size, like a model's deltas


def anthropic_router(state: EmulatorState) -> APIRouter:
    router = APIRouter(tags=["anthropic"])

    @router.post("/v1/messages")
    async def create_message(request: Request) -> Response:
        """Anthropic Messages API (`stream: true` answers with server-sent events)."""
        exchange = await Exchange.open(state, request, provider="anthropic")
        if (early := _reject_early(exchange)) is not None:
            return early
        body = exchange.body or {}
        usage = exchange.prepare_reply(
            prompt_parts={k: body.get(k) for k in ("system", "messages", "tools")}
        )
        assert exchange.credential is not None  # _reject_early checked it
        verdict = state.admit(provider="anthropic", credential=exchange.credential, usage=usage)
        if verdict.kind == "admitted":
            headers = _success_headers(exchange, verdict)
            response = _stream(exchange, usage) if exchange.stream else _message(exchange, usage)
            response.headers.update(headers)
            return exchange.finish(response, served=usage)
        if verdict.kind == "fault" and verdict.fault is not None:
            exchange.fault = verdict.fault.kind
            if verdict.fault.kind == "stream_overloaded" and exchange.stream:
                return exchange.finish(_stream_with_error(exchange, usage))
            return exchange.finish(fault_response(exchange, verdict.fault), error_type="fault")
        response = limited_response(exchange, verdict, usage=usage)
        return exchange.finish(response, error_type=verdict.kind)

    @router.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        """Token count of a would-be request (no limits or faults apply, as on the real API)."""
        exchange = await Exchange.open(state, request, provider="anthropic")
        if (early := _reject_early(exchange, needs_max_tokens=False)) is not None:
            return early
        body = exchange.body or {}
        tokens = estimate_tokens({k: body.get(k) for k in ("system", "messages", "tools")})
        return exchange.finish(JSONResponse({"input_tokens": tokens}))

    @router.api_route("/api/hello", methods=["GET", "HEAD"], include_in_schema=False)
    async def hello() -> Response:
        # The CLI probes this at start when non-essential traffic is allowed; a 404 is tolerated.
        return Response(status_code=200)

    return router


def _reject_early(exchange: Exchange, *, needs_max_tokens: bool = True) -> Response | None:
    """401 without a usable key, 400 for a body the real API would refuse."""
    credential = exchange.credential
    if credential is None:
        message = "x-api-key header is required"
        return exchange.finish(error_response(exchange, 401, "authentication_error", message))
    if not exchange.state.accepts(credential):
        message = "invalid x-api-key" if credential.kind == "api_key" else "Invalid bearer token"
        return exchange.finish(error_response(exchange, 401, "authentication_error", message))
    body = exchange.body
    problem = None
    if body is None:
        problem = "request body must be a JSON object"
    elif not isinstance(body.get("model"), str):
        problem = "model: Field required"
    elif not exchange.messages:
        problem = "messages: Field required"
    elif needs_max_tokens and exchange.max_tokens is None:
        problem = "max_tokens: Field required"
    if problem is None:
        return None
    response = error_response(exchange, 400, "invalid_request_error", problem)
    return exchange.finish(response, error_type="invalid_request_error")


def _success_headers(exchange: Exchange, verdict: Verdict) -> dict[str, str]:
    decision, rule = verdict.decision, verdict.rule
    if decision is None or rule is None:
        return {}
    assert exchange.credential is not None
    if exchange.credential.kind == "oauth":
        warn = decision.utilization >= rule.warning_utilization
        reset_at = max((s.reset_at for s in decision.states), default=exchange.now)
        return unified_headers(
            status="allowed_warning" if warn else "allowed",
            reset_at=reset_at,
            utilization=decision.utilization,
            claim=rule.unified_claim,
        )
    return anthropic_rate_limit_headers(decision.states)


def _message_object(exchange: Exchange, usage: Usage, *, streaming: bool) -> dict[str, Any]:
    assert exchange.reply is not None
    body = exchange.body or {}
    return {
        "id": "msg_" + exchange.request_id.removeprefix("req_"),
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [] if streaming else [{"type": "text", "text": exchange.reply.text}],
        "stop_reason": None if streaming else exchange.reply.stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": 1 if streaming else usage.output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _message(exchange: Exchange, usage: Usage) -> Response:
    return JSONResponse(_message_object(exchange, usage, streaming=False))


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _stream(exchange: Exchange, usage: Usage) -> Response:
    assert exchange.reply is not None
    text, stop_reason = exchange.reply.text, exchange.reply.stop_reason
    start = _message_object(exchange, usage, streaming=True)

    def events() -> Iterator[str]:
        yield _sse("message_start", {"type": "message_start", "message": start})
        block = {"type": "text", "text": ""}
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        yield _sse("ping", {"type": "ping"})
        for offset in range(0, len(text), _DELTA_CHARS):
            delta = {"type": "text_delta", "text": text[offset : offset + _DELTA_CHARS]}
            yield _sse(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage.output_tokens},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


def _stream_with_error(exchange: Exchange, usage: Usage) -> Response:
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
