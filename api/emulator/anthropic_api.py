"""Anthropic Messages API front-end: `/v1/messages` (JSON and SSE) and `count_tokens`.

Complete enough for the official SDK and the real `claude` CLI (see CLAUDE_CLI_NOTES.md): the
CLI posts to `/v1/messages?beta=true` with `stream: true` and tools, and tolerates a plain-text
reply; with an agent script in force, it gets tool calls (agent.py, anthropic_messages.py).
API keys get `retry-after` + `anthropic-ratelimit-*`; subscription (OAuth) tokens get the
`anthropic-ratelimit-unified-*` family, on successes too.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.emulator.anthropic_errors import error_response, fault_response, limited_response
from api.emulator.anthropic_messages import (
    message_response,
    stream_response,
    stream_with_error_response,
)
from api.emulator.exchange import Exchange
from api.emulator.headers import anthropic_rate_limit_headers, unified_headers
from api.emulator.replies import dangling_tool_uses, estimate_tokens, plain_text_prompt
from api.emulator.state import EmulatorState, Verdict

__all__ = ["anthropic_router"]


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
            prompt_parts={k: body.get(k) for k in ("system", "messages", "tools")},
            agent=state.config.agent,
        )
        assert exchange.credential is not None  # _reject_early checked it
        verdict = state.admit(provider="anthropic", credential=exchange.credential, usage=usage)
        if verdict.kind == "admitted":
            headers = _success_headers(exchange, verdict)
            respond = stream_response if exchange.stream else message_response
            response = respond(exchange, usage)
            response.headers.update(headers)
            return exchange.finish(response, served=usage)
        if verdict.kind == "fault" and verdict.fault is not None:
            exchange.fault = verdict.fault.kind
            if verdict.fault.kind == "stream_overloaded" and exchange.stream:
                return exchange.finish(stream_with_error_response(exchange, usage))
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
        prompt = {k: body.get(k) for k in ("system", "messages", "tools")}
        tokens = estimate_tokens(plain_text_prompt(prompt))
        return exchange.finish(JSONResponse({"input_tokens": tokens}))

    @router.api_route("/api/hello", methods=["GET", "HEAD"], include_in_schema=False)
    async def hello() -> Response:
        # The CLI probes this at start when non-essential traffic is allowed; a 404 is tolerated.
        return Response(status_code=200)

    return router


def _reject_early(exchange: Exchange, *, needs_max_tokens: bool = True) -> Response | None:
    """401 without a usable key, 400 for a body the real API would refuse (including a tool
    call left without its result, as a badly repaired transcript would send)."""
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
    elif (dangling := dangling_tool_uses(exchange.messages)) is not None:
        index, ids = dangling
        problem = (
            f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {', '.join(ids)}. Each `tool_use` block must have a "
            "corresponding `tool_result` block in the next message."
        )
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
