"""What the relay answers by itself, in the Anthropic error shape the CLI understands:

    {"type": "error", "error": {"type": <error type>, "message": ...}, "request_id": ...}

- `refusal`: 401 `authentication_error` (no placeholder), 403 `permission_error` (another Host,
  a proxy-style target), 413 `request_too_large`, 400 `invalid_request_error`;
- `unreachable`: 502 / 504 `api_error` when the provider cannot be reached; the CLI, with its
  retries off, ends the turn on it;
- `local_limit`: 429 `rate_limit_error` when the keystore knows the key cannot serve now, with
  `retry-after` (seconds to the reset, rounded up) and, for a subscription token, the unified
  headers the CLI reads a usage limit and its reset from.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from datetime import datetime

from flows.executors.relay_headers import Headers
from keystore.ratelimits import RateLimitSignal

__all__ = ["ERROR_TYPES", "local_limit", "refusal", "unreachable"]

Whole = tuple[int, Headers, bytes]
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    413: "request_too_large",
    429: "rate_limit_error",
    502: "api_error",
    504: "api_error",
}


def _error(status: int, message: str, *, headers: Headers | None = None) -> Whole:
    request_id = f"req_keyrelay_{secrets.token_hex(12)}"
    body = {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": request_id,
    }
    head = [
        (b"content-type", b"application/json"),
        (b"request-id", request_id.encode()),
        *(headers or []),
    ]
    return status, head, json.dumps(body, separators=(",", ":")).encode()


def refusal(status: int, message: str) -> Whole:
    return _error(status, f"keyrelay relay: {message}")


def unreachable(*, timed_out: bool, detail: str) -> Whole:
    what = "did not answer in time" if timed_out else "could not be reached"
    return _error(504 if timed_out else 502, f"keyrelay relay: the provider {what} ({detail})")


# The window a usage limit names in its source header, as the claim the CLI knows it by.
_WINDOW_SOURCE = re.compile(r"anthropic-ratelimit-unified-(?P<window>[a-z0-9_]+)-(reset|status)")
_CLAIMS = {"5h": b"five_hour", "7d": b"seven_day", "7d_oi": b"seven_day_overage_included"}


def _claim(signal: RateLimitSignal) -> bytes:
    """The subscription window the signal came from; the five-hour one when it does not say."""
    match = _WINDOW_SOURCE.fullmatch(signal.source or "")
    return _CLAIMS.get(match["window"], b"five_hour") if match else b"five_hour"


def retry_after_s(resets_at: datetime, *, now: datetime) -> int:
    """Whole seconds until the reset, rounded up, at least 1 (0 invites a tight loop)."""
    return max(1, math.ceil((resets_at - now).total_seconds()))


def local_limit(signal: RateLimitSignal, *, oauth: bool, now: datetime) -> Whole:
    headers: Headers = []
    when = "at an unknown time"
    if signal.resets_at is not None:
        headers.append((b"retry-after", str(retry_after_s(signal.resets_at, now=now)).encode()))
        when = f"at {signal.resets_at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    if oauth:
        headers.append((b"anthropic-ratelimit-unified-status", b"rejected"))
        if signal.resets_at is not None:
            reset = str(math.ceil(signal.resets_at.timestamp())).encode()
            headers.append((b"anthropic-ratelimit-unified-reset", reset))
        if signal.kind == "usage_limit":
            # The claim is what makes the CLI say "You've hit your 5-hour limit · resets ...";
            # without one it reports "Server is temporarily limiting requests (not your usage
            # limit)", which is what a short `rate_limit` is (CLAUDE_CLI_NOTES.md, relay).
            headers.append((b"anthropic-ratelimit-unified-representative-claim", _claim(signal)))
    message = (
        f"keyrelay relay: this key cannot serve now ({signal.kind}, from {signal.source}); "
        f"it resets {when}. No request was sent to the provider."
    )
    return _error(429, message, headers=headers)
