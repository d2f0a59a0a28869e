"""Anthropic error responses: bodies and headers as the real API sends them.

Body shape: `{"type": "error", "error": {"type", "message"[, "details"]}, "request_id"}`.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from api.emulator.config import FaultRule
from api.emulator.exchange import Exchange
from api.emulator.headers import anthropic_rate_limit_headers, retry_after_s, unified_headers
from api.emulator.state import Verdict
from api.emulator.windows import Usage

__all__ = ["error_response", "fault_response", "limited_response"]


def error_response(
    exchange: Exchange,
    status: int,
    error_type: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details is not None:
        error["details"] = details
    body = {"type": "error", "error": error, "request_id": exchange.request_id}
    return JSONResponse(body, status_code=status, headers=headers)


def _rate_limit(exchange: Exchange, message: str, headers: dict[str, str]) -> JSONResponse:
    return error_response(exchange, 429, "rate_limit_error", message, headers=headers)


def limited_response(exchange: Exchange, verdict: Verdict, *, usage: Usage) -> JSONResponse:
    """The answer for a refused request: unauthorized, IP-wide, over the window, too large."""
    if verdict.kind == "unauthorized":
        return error_response(exchange, 401, "authentication_error", "invalid x-api-key")
    if verdict.kind == "ip_limited":
        # An IP-wide limit names no reset: the client cannot tell when, nor that it is the IP.
        return _rate_limit(
            exchange, "Number of concurrent connections has exceeded your rate limit.", {}
        )
    decision, rule = verdict.decision, verdict.rule
    assert decision is not None and rule is not None and exchange.credential is not None
    if verdict.kind == "too_large":
        cap = min(s.limit for s in decision.states if s.dimension != "requests")
        message = (
            f"Prompt is too long for the rate limit: {usage.tokens} tokens requested, "
            f"the limit is {cap} tokens per window."
        )
        return error_response(exchange, 413, "request_too_large", message)
    assert decision.retry_at is not None
    if exchange.credential.kind == "oauth":
        headers = unified_headers(
            status="rejected", reset_at=decision.retry_at, utilization=1.0, claim=rule.unified_claim
        )
        message = "This request would exceed your account's rate limit. Please try again later."
        return _rate_limit(exchange, message, headers)
    headers = {"retry-after": str(retry_after_s(retry_at=decision.retry_at, now=exchange.now))}
    headers.update(anthropic_rate_limit_headers(decision.states))
    exhausted = [
        s.dimension.replace("_", " ")
        for s in decision.states
        if s.remaining < usage.get(s.dimension)
    ]
    message = (
        "This request would exceed the rate limit for your organization of "
        f"{', '.join(exhausted) or 'tokens'} per {rule.window_s:g} seconds. "
        "Please reduce the prompt length or the maximum tokens requested, or try again later."
    )
    return _rate_limit(exchange, message, headers)


def fault_response(exchange: Exchange, fault: FaultRule) -> JSONResponse:
    kind = fault.kind
    if kind in ("overloaded", "stream_overloaded"):
        return error_response(exchange, 529, "overloaded_error", "Overloaded")
    if kind == "server_error":
        return error_response(exchange, 500, "api_error", "Internal server error")
    if kind == "spend_limit":
        message = (
            "You have reached your specified workspace API usage limits. "
            "You will regain access on the first of next month at 00:00 UTC."
        )
        details = {"error_code": "enforced_spend_limit_reached"}
        return error_response(exchange, 429, "rate_limit_error", message, details=details)
    if kind == "request_too_large":
        message = "Request exceeds the maximum allowed number of bytes."
        return error_response(exchange, 413, "request_too_large", message)
    if kind == "junk_headers":
        junk = {
            "retry-after": "abc",
            "anthropic-ratelimit-requests-limit": "many",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "not-a-date",
            "anthropic-ratelimit-tokens-reset": "2026-13-45T99:99:99Z",
        }
        if exchange.credential is not None and exchange.credential.kind == "oauth":
            junk["anthropic-ratelimit-unified-status"] = "rejected"
            junk["anthropic-ratelimit-unified-reset"] = "soon"
        return _rate_limit(exchange, "Rate limited.", junk)
    # missing_headers: a 429 that says nothing about when.
    return _rate_limit(exchange, "Rate limited.", {})
