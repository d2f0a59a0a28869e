"""HTTP responses in every shape: header containers and case, body encodings (bytes, str,
SSE, parsed), responses that are not limits, and bare statuses."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.ratelimit_cases import OVERLOADED, RATE_LIMITED, at, parsed

# --- headers in any shape, any case --------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "12"},
        {"RETRY-AFTER": "12"},
        {"rEtRy-AfTeR": " 12 "},
        [("Retry-After", "12")],
        [(b"retry-after", b"12")],
        httpx.Headers({"Retry-After": "12"}),
        httpx.Headers([("retry-after", "12"), ("retry-after", "99")]),  # first one wins
    ],
    ids=["title", "upper", "mixed", "pairs", "bytes", "httpx", "httpx-repeated"],
)
def test_headers_are_case_insensitive_in_any_container(headers: Any) -> None:
    assert parsed("anthropic", 429, headers, RATE_LIMITED) == (
        "rate_limit",
        at(0, 0, 12),
        True,
        "retry-after",
        None,
    )


def test_unified_header_names_are_case_insensitive() -> None:
    headers = {
        "Anthropic-RateLimit-Unified-Status": "REJECTED",
        "Anthropic-RateLimit-Unified-Reset": "1767243600",
        "Anthropic-RateLimit-Unified-5h-Utilization": "1.0",
    }
    assert parsed("claude-code", 429, headers) == (
        "usage_limit",
        at(5),
        True,
        "anthropic-ratelimit-unified-reset",
        1.0,
    )


# --- bodies in any shape ---------------------------------------------------------------------

SSE_OVERLOADED = (
    "event: message_start\n"
    'data: {"type": "message_start", "message": {"id": "msg_1", "type": "message"}}\n'
    "\n"
    "event: ping\n"
    'data: {"type": "ping"}\n'
    "\n"
    "event: error\n"
    'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n'
    "\n"
)


@pytest.mark.parametrize(
    "body",
    [
        OVERLOADED,
        json.dumps(OVERLOADED),
        json.dumps(OVERLOADED).encode(),
        bytearray(json.dumps(OVERLOADED).encode()),
        SSE_OVERLOADED,
        SSE_OVERLOADED.encode(),
        SSE_OVERLOADED.replace("\n", "\r\n"),
    ],
    ids=["dict", "str", "bytes", "bytearray", "sse", "sse-bytes", "sse-crlf"],
)
def test_overloaded_in_any_body_shape_even_after_200(body: Any) -> None:
    assert parsed("anthropic", 200, {}, body) == ("overloaded", None, True, "error.type", None)


@pytest.mark.parametrize(
    "body",
    [
        {"id": "msg_1", "type": "message", "content": [{"type": "text", "text": "hi"}]},
        SSE_OVERLOADED.split("event: error")[0],  # a stream without an error event
        "",
        b"",
        None,
    ],
)
def test_ok_response_is_not_a_limit(body: Any) -> None:
    assert parsed("anthropic", 200, {"retry-after": "5"}, body) is None


@pytest.mark.parametrize(
    ("provider", "status", "body"),
    [
        ("anthropic", 400, {"type": "error", "error": {"type": "invalid_request_error"}}),
        ("anthropic", 401, {"type": "error", "error": {"type": "authentication_error"}}),
        ("anthropic", 500, {"type": "error", "error": {"type": "api_error"}}),
        ("openai", 400, {"error": {"type": "invalid_request_error", "code": "context_length"}}),
        ("openai", 401, {"error": {"type": "invalid_request_error", "code": "invalid_api_key"}}),
        ("gemini", 400, {"error": {"code": 400, "status": "INVALID_ARGUMENT"}}),
        ("gemini", 403, {"error": {"code": 403, "status": "PERMISSION_DENIED"}}),
    ],
)
def test_other_errors_are_not_limits(provider: str, status: int, body: Any) -> None:
    assert parsed(provider, status, {"retry-after": "5"}, body) is None


def test_truncated_json_body_still_classifies_by_status() -> None:
    body = b'{"type": "error", "error": {"type": "rate_limit_er'
    assert parsed("anthropic", 429, {"retry-after": "3"}, body) == (
        "rate_limit",
        at(0, 0, 3),
        True,
        "retry-after",
        None,
    )


def test_sse_data_only_error_object() -> None:
    body = 'data: {"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}\n\n'
    assert parsed("openai", 429, {}, body) == ("quota_exhausted", None, False, "error.code", None)


@pytest.mark.parametrize(
    ("provider", "status", "expected"),
    [
        ("anthropic", 413, ("request_too_large", None, False, "status", None)),
        ("openai", 413, ("request_too_large", None, False, "status", None)),
        ("openai", 529, ("overloaded", None, True, "status", None)),
        ("gemini", 529, ("overloaded", None, True, "status", None)),
        ("anthropic", 429, ("rate_limit", None, True, "status", None)),
        ("openai", 429, ("rate_limit", None, True, "status", None)),
        ("gemini", 429, ("rate_limit", None, True, "status", None)),
    ],
)
def test_bare_status_without_body(provider: str, status: int, expected: tuple[Any, ...]) -> None:
    assert parsed(provider, status, {}, None) == expected
