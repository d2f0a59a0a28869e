"""Limit signals in the `claude` CLI's JSON output (stream-json events and the final `result`).

    {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": 1767243600,
     "rateLimitType": "five_hour", "utilization": 1.0, ...}}
    {"type": "result", "is_error": true, "api_error_status": 429, "result": "You've hit ..."}

Only `status: rejected` is a hit; `allowed` with `overageStatus: rejected` is informational.
When both kinds are present the event's `resetsAt` wins (exact epoch seconds, where the result
text has minute precision at best); the result text fills in when the events carry no time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from keystore.ratelimits.body import decode_body, text_at
from keystore.ratelimits.result_text import parse_result_text
from keystore.ratelimits.signal import RateLimitSignal
from keystore.ratelimits.timeparse import (
    ResponseClock,
    parse_absolute,
    parse_decimal,
    require_aware,
)
from keystore.ratelimits.unified import parse_fraction

logger = logging.getLogger(__name__)

# A single object, a list of objects, or the raw stdout (JSON lines) as str/bytes.
MessagesLike = Mapping[str, Any] | Iterable[Mapping[str, Any] | str | bytes] | str | bytes


def parse_claude_code_output(
    messages: MessagesLike, *, received_at: datetime
) -> RateLimitSignal | None:
    """The limit the CLI ran into, or None when its output shows none."""
    received_at = require_aware(received_at)
    try:
        return _parse(messages, received_at=received_at)
    except Exception:
        # Junk never raises: an unforeseen shape counts as "no signal" and is logged for a fix.
        logger.exception("could not read claude CLI output; treating it as no limit signal")
        return None


def _parse(messages: object, *, received_at: datetime) -> RateLimitSignal | None:
    events: list[RateLimitSignal] = []
    results: list[RateLimitSignal] = []
    for message in _objects(messages):
        if message.get("type") == "rate_limit_event":
            event = _from_event(message, received_at=received_at)
            if event is not None:
                events.append(event)
        elif message.get("type") == "result":
            result = _from_result(message, received_at=received_at)
            if result is not None:
                results.append(result)

    timed = [e for e in events if e.resets_at is not None]
    if timed:
        return max(timed, key=lambda e: e.resets_at or received_at)
    result = results[-1] if results else None
    if result is not None and (result.resets_at is not None or not events):
        if result.utilization is None and events and result.kind == "usage_limit":
            result = replace(result, utilization=events[-1].utilization)
        return result
    return events[-1] if events else None


def _objects(messages: object) -> Iterator[Mapping[str, Any]]:
    if isinstance(messages, Mapping):
        yield messages
        return
    if isinstance(messages, bytes | bytearray):
        messages = bytes(messages).decode("utf-8", errors="replace")
    if isinstance(messages, str):
        messages = messages.splitlines()
    if not isinstance(messages, Iterable):
        return
    for item in messages:
        if isinstance(item, Mapping):
            yield item
        elif isinstance(item, str | bytes | bytearray):
            decoded = decode_body(item)
            if decoded:
                yield decoded


def _from_event(message: Mapping[str, Any], *, received_at: datetime) -> RateLimitSignal | None:
    info = message.get("rate_limit_info")
    if not isinstance(info, Mapping):
        return None
    if (text_at(info, "status") or "").strip().lower() != "rejected":
        return None
    resets_at = ResponseClock(received_at=received_at).at(parse_absolute(info.get("resetsAt")))
    return RateLimitSignal(
        kind="usage_limit",
        resets_at=resets_at,
        retryable=True,
        source="rate_limit_event.resetsAt" if resets_at else "rate_limit_event.status",
        utilization=parse_fraction(info.get("utilization")),
    )


def _from_result(message: Mapping[str, Any], *, received_at: datetime) -> RateLimitSignal | None:
    text = text_at(message, "result") or ""
    api_status = _status(message.get("api_error_status"))
    is_error = message.get("is_error") is True or api_status is not None
    signal = parse_result_text(text, received_at=received_at, is_error=is_error)
    if signal is not None:
        return signal
    # The CLI said what the API answered even though we cannot read its words.
    if api_status == 429:
        return RateLimitSignal(
            kind="rate_limit", resets_at=None, retryable=True, source="api_error_status"
        )
    if api_status == 529:
        return RateLimitSignal(
            kind="overloaded", resets_at=None, retryable=True, source="api_error_status"
        )
    return None


def _status(value: object) -> int | None:
    number = parse_decimal(value)
    if number is None or number != number.to_integral_value() or not 100 <= number <= 599:
        return None
    return int(number)
