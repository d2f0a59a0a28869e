"""OpenAI error responses: `{"error": {"message", "type", "param", "code"}}` and x-ratelimit-*."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from api.emulator.config import FaultRule
from api.emulator.exchange import Exchange
from api.emulator.headers import go_duration, openai_rate_limit_headers, retry_after_s
from api.emulator.state import Verdict
from api.emulator.windows import Usage

__all__ = ["error_response", "fault_response", "limited_response"]

_ORG = "org-emulator"
_DOCS = "Visit https://platform.openai.com/account/rate-limits to learn more."


def error_response(
    status: int,
    message: str,
    *,
    error_type: str,
    code: str | None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _too_large(model: str, *, limit: int, requested: int) -> JSONResponse:
    message = (
        f"Request too large for {model} in organization {_ORG} on tokens per min (TPM): "
        f"Limit {limit}, Requested {requested}. The input or output tokens must be reduced in "
        f"order to run successfully. {_DOCS}"
    )
    return error_response(429, message, error_type="tokens", code="rate_limit_exceeded")


def limited_response(exchange: Exchange, verdict: Verdict, *, usage: Usage) -> JSONResponse:
    model = str((exchange.body or {}).get("model"))
    if verdict.kind == "unauthorized":
        return invalid_key_response(exchange)
    if verdict.kind == "ip_limited":
        message = "Too many requests from this IP address. Please slow down."
        return error_response(429, message, error_type="requests", code="rate_limit_exceeded")
    decision = verdict.decision
    assert decision is not None
    if verdict.kind == "too_large":
        cap = min(s.limit for s in decision.states if s.dimension != "requests")
        return _too_large(model, limit=cap, requested=usage.tokens)
    assert decision.retry_at is not None
    wait_s = decision.retry_at - exchange.now
    blocking = next(s for s in decision.states if s.remaining < usage.get(s.dimension))
    unit = "requests per min (RPM)" if blocking.dimension == "requests" else "tokens per min (TPM)"
    used = blocking.limit - blocking.remaining
    message = (
        f"Rate limit reached for {model} in organization {_ORG} on {unit}: Limit "
        f"{blocking.limit}, Used {used}, Requested {usage.get(blocking.dimension)}. "
        f"Please try again in {go_duration(wait_s)}. {_DOCS}"
    )
    headers = {"retry-after": str(retry_after_s(retry_at=decision.retry_at, now=exchange.now))}
    headers.update(openai_rate_limit_headers(decision.states, now=exchange.now))
    error_type = "requests" if blocking.dimension == "requests" else "tokens"
    return error_response(
        429, message, error_type=error_type, code="rate_limit_exceeded", headers=headers
    )


def invalid_key_response(exchange: Exchange) -> JSONResponse:
    shown = exchange.credential.masked if exchange.credential else ""
    message = (
        f"Incorrect API key provided: {shown}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return error_response(401, message, error_type="invalid_request_error", code="invalid_api_key")


def fault_response(exchange: Exchange, fault: FaultRule, *, usage: Usage) -> JSONResponse:
    kind = fault.kind
    if kind == "overloaded":
        message = "The server is overloaded or not ready yet."
        return error_response(503, message, error_type="server_error", code=None)
    if kind == "server_error":
        message = "The server had an error while processing your request. Sorry about that!"
        return error_response(500, message, error_type="server_error", code=None)
    if kind == "insufficient_quota":
        message = (
            "You exceeded your current quota, please check your plan and billing details. For "
            "more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors."
        )
        return error_response(
            429, message, error_type="insufficient_quota", code="insufficient_quota"
        )
    if kind == "request_too_large":
        model = str((exchange.body or {}).get("model"))
        limit = max(1, usage.tokens - 1)
        return _too_large(model, limit=limit, requested=usage.tokens)
    message = f"Rate limit reached for requests in organization {_ORG}."
    if kind == "junk_headers":
        junk = {
            "retry-after": "abc",
            "x-ratelimit-limit-requests": "lots",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "soon",
            "x-ratelimit-reset-tokens": "-3zz",
        }
        return error_response(
            429, message, error_type="requests", code="rate_limit_exceeded", headers=junk
        )
    # missing_headers
    return error_response(429, message, error_type="requests", code="rate_limit_exceeded")
