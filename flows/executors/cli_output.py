"""Reading a finished `claude -p --output-format stream-json` run that is not a limit: the
error it ended with, or the usage and utilization of a successful turn.

Error mapping (api_error_status is the HTTP status the CLI got from the API):
401/403 -> KeyRejected; "No conversation found with session ID" -> SessionNotFound; 5xx ->
ProviderUnavailable; other 4xx -> RequestRejected; anything else (crash, no result) ->
AgentFailed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flows.executors.cli_process import CliOutput
from flows.executors.errors import (
    AgentFailed,
    ExecutorError,
    KeyRejected,
    ProviderUnavailable,
    RequestRejected,
    SessionNotFound,
)
from flows.executors.redact import Redactor

__all__ = ["turn_failure", "turn_usage", "turn_utilization"]

AGENT = "claude-code"
_NO_SESSION = "No conversation found with session ID"


def turn_failure(
    output: CliOutput, result: Mapping[str, Any] | None, *, key_id: int, redactor: Redactor
) -> ExecutorError:
    status = result.get("api_error_status") if result is not None else None
    status = status if isinstance(status, int) and not isinstance(status, bool) else None
    said = [
        str(result.get("result") or "") if result is not None else "",
        " ".join(map(str, result.get("errors") or [])) if result is not None else "",
        output.other_stdout,
        output.stderr,
    ]
    detail = redactor.excerpt(" | ".join(s for s in said if s.strip()) or "no output")
    text = f"{AGENT} key {key_id}: the CLI exited {output.returncode}"
    if status is not None:
        text += f" (API status {status})"
    text += f": {detail}"
    fields: dict[str, Any] = {"agent": AGENT, "key_id": key_id, "status": status}
    if status in (401, 403):
        return KeyRejected(text, **fields)
    if any(_NO_SESSION in s for s in said):
        return SessionNotFound(text, **fields)
    if status is not None and status >= 500:
        return ProviderUnavailable(text, **fields)
    if status is not None and 400 <= status < 500:
        return RequestRejected(text, **fields)
    return AgentFailed(text, **fields)


def turn_usage(result: Mapping[str, Any]) -> dict[str, int]:
    usage = result.get("usage")
    if not isinstance(usage, Mapping):
        return {}
    return {
        name: value
        for name in ("input_tokens", "output_tokens")
        if isinstance(value := usage.get(name), int) and not isinstance(value, bool)
    }


def turn_utilization(events: Sequence[Mapping[str, Any]]) -> float | None:
    """The highest subscription-window utilization the turn's `rate_limit_event`s report
    (API keys get no such event: None)."""
    readings: list[float] = []
    for event in events:
        info = event.get("rate_limit_info") if event.get("type") == "rate_limit_event" else None
        if not isinstance(info, Mapping):
            continue
        windows = info.get("unifiedWindows")
        candidates = [info.get("utilization")]
        if isinstance(windows, Mapping):
            candidates += [w.get("utilization") for w in windows.values() if isinstance(w, Mapping)]
        readings += [
            float(c)
            for c in candidates
            if isinstance(c, int | float) and not isinstance(c, bool) and 0 <= c <= 1
        ]
    return max(readings) if readings else None
