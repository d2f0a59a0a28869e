"""A failed HTTP call to a provider, turned into the turn's outcome: the limit signal the
keystore's parser reads from it, or the `ExecutorError` to raise.

Shared by the `anthropic` and `openai` executors; both SDKs raise `APIStatusError` with the
response (headers) and the parsed body, which is all `parse_rate_limit` needs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Protocol

from flows.executors.errors import (
    ExecutorError,
    KeyRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RequestRejected,
)
from flows.executors.redact import Redactor
from keystore.ratelimits import RateLimitSignal, parse_rate_limit

__all__ = ["connection_failure", "error_body", "status_failure"]


class _Response(Protocol):
    @property
    def content(self) -> bytes: ...


def error_body(*, status: int, response: _Response, parsed: object) -> object:
    """What to classify: the raw body of an error response (the SDKs read it before raising;
    the OpenAI SDK's parsed `body` has lost its `{"error": ...}` wrapper), or for a 200 stream
    that broke off, the SDK's parsed `event: error` payload (the stream has no readable body)."""
    if status >= 400 and response.content.strip():
        return response.content
    return parsed


def status_failure(
    agent: Literal["anthropic", "openai"],
    *,
    status: int,
    headers: Mapping[str, str],
    body: object,
    received_at: datetime,
    key_id: int,
    request_id: str | None,
    redactor: Redactor,
) -> RateLimitSignal | ExecutorError:
    """A limit signal when the response is one (429, overload, spend cap, too large, and the
    200 stream that broke off with `event: error`), else the error for its status."""
    signal = parse_rate_limit(
        agent,
        status=status,
        headers=headers,
        body=body if isinstance(body, dict | str | bytes) else None,
        received_at=received_at,
    )
    if signal is not None:
        return signal
    error_type, error_message = _error_fields(body)
    text = f"{agent} key {key_id}: HTTP {status}"
    if error_type:
        text += f" {error_type}"
    if error_message:
        text += f": {redactor.excerpt(error_message)}"
    if request_id:
        text += f" (request {request_id})"
    fields: dict[str, Any] = {
        "agent": agent,
        "key_id": key_id,
        "status": status,
        "request_id": request_id,
    }
    if status in (401, 403):
        return KeyRejected(text, **fields)
    if 400 <= status < 500:
        return RequestRejected(text, **fields)
    return ProviderUnavailable(text, **fields)


def connection_failure(
    agent: str, *, timed_out: bool, detail: str, key_id: int, redactor: Redactor
) -> ExecutorError:
    what = "timed out" if timed_out else "could not reach the provider"
    text = f"{agent} key {key_id}: {what}: {redactor.excerpt(detail)}"
    cls = ProviderTimeout if timed_out else ProviderUnavailable
    return cls(text, agent=agent, key_id=key_id)


def _error_fields(body: object) -> tuple[str | None, str | None]:
    """`error.type` and `error.message` of an Anthropic or OpenAI error body, or the raw text."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        text = body
        try:
            body = json.loads(text)
        except ValueError:
            return (None, text) if text.strip() else (None, None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            error_type, message = error.get("type"), error.get("message")
            return (
                error_type if isinstance(error_type, str) else None,
                message if isinstance(message, str) else None,
            )
        if isinstance(error, str):
            return None, error
    return None, None
