"""What a turn that was interrupted part-way is told when it resumes on the next key.

Not a bare "Continue.": some CLI versions add their own "Continue from where you left off." and a
synthetic "No response requested." when they resume, and agents then stop doing anything
(anthropics/claude-code#89265). The prompt names the interruption and restates the task.
"""

from __future__ import annotations

from flows.executors.errors import (
    AgentFailed,
    ExecutorError,
    KeyRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from keystore import LeaseLost, RateLimitSignal

__all__ = ["continuation_prompt", "interruption"]

_LIMITS = {
    "rate_limit": "the API key hit a rate limit",
    "usage_limit": "the subscription reached its usage limit",
    "quota_exhausted": "the key's quota ran out",
    "overloaded": "the API was overloaded",
    "request_too_large": "a request was too large",
}


def interruption(event: object) -> str:
    """A short, key-free description of why an attempt ended early (for the agent to read)."""
    if isinstance(event, RateLimitSignal):
        return _LIMITS.get(event.kind, "the API refused a request")
    if isinstance(event, LeaseLost):
        return "the worker lost its hold on the API key"
    if isinstance(event, ProviderTimeout):
        return "the turn ran out of time"
    if isinstance(event, KeyRejected):
        return "the API rejected the key"
    if isinstance(event, ProviderUnavailable):
        return "the API failed to answer"
    if isinstance(event, AgentFailed):
        return "the agent process stopped unexpectedly"
    if isinstance(event, ExecutorError):
        return "a request failed"
    return "it was stopped"


def continuation_prompt(task: str, why: str | None, interrupted_tools: int = 0) -> str:
    unknown = (
        f" {interrupted_tools} tool call(s) were cut off before their result was recorded: "
        "check whether they took effect before relying on them or running them again."
        if interrupted_tools
        else ""
    )
    return (
        f"[keyrelay] This turn was interrupted before it finished ({why or 'it was stopped'}) "
        "and now continues. Everything above happened: the tool calls that have results took "
        f"effect.{unknown} Do not repeat work that is done; carry on from where it stopped "
        "until the task of this turn is complete.\n\nThe task of this turn:\n\n"
        f"{task}"
    )
