"""Reading a provider's HTTP response for limit signals: the entry points for every provider.

`source` on a signal names the header or body field its `resets_at` came from; when there is no
reset, it names what classified the response (`error.type`, `error.details.error_code`, `status`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal, Protocol

from keystore.ratelimits import anthropic, gemini, openai
from keystore.ratelimits.body import BodyLike, decode_body
from keystore.ratelimits.headers import Headers, HeadersLike
from keystore.ratelimits.signal import RateLimitSignal
from keystore.ratelimits.timeparse import ResponseClock, parse_decimal, require_aware
from keystore.ratelimits.unified import unified_utilization

logger = logging.getLogger(__name__)

Provider = Literal["anthropic", "claude-code", "openai", "gemini"]


class ResponseParser(Protocol):
    def __call__(
        self, *, status: int, headers: Headers, body: dict[str, Any], clock: ResponseClock
    ) -> RateLimitSignal | None: ...


# claude-code over HTTP is the Anthropic API with an OAuth bearer token: same errors, and the
# unified subscription headers that parse_anthropic already reads.
_PARSERS: dict[str, ResponseParser] = {
    "anthropic": anthropic.parse_anthropic,
    "claude-code": anthropic.parse_anthropic,
    "openai": openai.parse_openai,
    "gemini": gemini.parse_gemini,
}
PROVIDERS: tuple[str, ...] = tuple(_PARSERS)


def _parser_for(provider: str) -> ResponseParser:
    try:
        return _PARSERS[provider]
    except (KeyError, TypeError):
        raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}") from None


def parse_rate_limit(
    provider: Provider | str,
    *,
    status: int,
    headers: HeadersLike,
    body: BodyLike,
    received_at: datetime,
) -> RateLimitSignal | None:
    """What an HTTP response says about the key's limit; None when it is not a limit at all.

    Raises ValueError only for caller bugs: an unknown provider, a naive `received_at`. Anything
    the provider sent, however broken, yields a signal or None.
    """
    parser = _parser_for(provider)
    received_at = require_aware(received_at)
    status_code = _status_code(status)
    try:
        response_headers = Headers(headers)
        clock = ResponseClock.from_date_header(
            received_at=received_at, date=response_headers.get("date")
        )
        return parser(
            status=status_code, headers=response_headers, body=decode_body(body), clock=clock
        )
    except Exception:
        # Never reached by design (every value parser is total); if it is, the status code alone
        # still tells a 429 from a 529, which beats failing the caller's error handling.
        logger.exception("could not read a response from %s; classifying by status only", provider)
        return _by_status_only(status_code)


def parse_utilization(provider: Provider | str, *, headers: HeadersLike) -> float | None:
    """How used up the key is, 0..1, from any response's headers, so a pool can rotate early.

    Subscriptions: the highest unified window utilization. API keys: `1 - remaining/limit` of the
    most-used bucket. None when the headers say nothing (Gemini never does).
    """
    _parser_for(provider)
    try:
        response_headers = Headers(headers)
        readings: list[float | None]
        if provider in ("anthropic", "claude-code"):
            readings = [
                unified_utilization(response_headers),
                anthropic.api_key_utilization(response_headers),
            ]
        elif provider == "openai":
            readings = [openai.api_key_utilization(response_headers)]
        else:
            readings = []
        known = [r for r in readings if r is not None]
        return max(known) if known else None
    except Exception:
        logger.exception("could not read %s utilization headers", provider)
        return None


def _status_code(status: Any) -> int:
    number = parse_decimal(status)
    if number is None or number != number.to_integral_value() or number > 999:
        return 0
    return int(number)


def _by_status_only(status: int) -> RateLimitSignal | None:
    if status == 429:
        return RateLimitSignal(kind="rate_limit", resets_at=None, retryable=True, source="status")
    if status == 529:
        return RateLimitSignal(kind="overloaded", resets_at=None, retryable=True, source="status")
    return None
