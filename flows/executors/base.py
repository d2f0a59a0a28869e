"""The executor contract: one turn of a conversation on one leased key, and nothing more.

    executor = executor_for("anthropic", max_tokens=1024)
    outcome = await executor.run_turn(lease, prompt="...", model=None, checkpoint=previous,
                                      report=record)
    if isinstance(outcome, RateLimitSignal): ...   # the flow marks the key and rotates/defers
    else: save(outcome.checkpoint)                  # the next turn starts from here

An executor makes exactly one provider call per turn (SDK and CLI retries are off) and never
retries, waits or rotates by itself: every limit comes back as the `RateLimitSignal` the
keystore's parsers read from the response; other failures raise an `ExecutorError`
(errors.py). A turn never changes the checkpoint it was given, so a turn that failed can be run
again from the same checkpoint, on another key, process or machine.

`report`, when given, hears every HTTP response the turn got from the provider, success or
refusal, as it arrives (status, headers, and the body of an error): the flow hands it to
`Keystore.record_response`, so the keystore learns each key's buckets from every answer.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from keystore.errors import InvalidInput
from keystore.lease import Lease
from keystore.ratelimits import RateLimitSignal

__all__ = [
    "AGENTS",
    "Executor",
    "Gate",
    "KeepPartial",
    "ProviderResponse",
    "Report",
    "TurnOutcome",
    "TurnResult",
    "check_prompt",
    "executor_for",
]


@dataclass(frozen=True)
class ProviderResponse:
    """One HTTP answer of the provider, as much as the keystore needs to learn from it."""

    status: int
    headers: Mapping[str, str] = field(repr=False)
    received_at: datetime
    body: bytes | str | dict[str, Any] | None = field(default=None, repr=False)


Report = Callable[[ProviderResponse], Awaitable[None]]
# Asked before each provider request: a signal means the keystore already knows the key would
# refuse it, and the request is not sent (the signal is the turn's outcome instead).
Gate = Callable[[], Awaitable[RateLimitSignal | None]]
# Takes the executor state of a turn that ended without a result, as far as it got (an agent that
# works in steps, such as the `claude` CLI, resumes from it instead of starting the turn over).
KeepPartial = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class TurnResult:
    text: str  # the assistant's reply for this turn
    # JSON-serializable state the next turn (possibly on another key, process or machine) needs
    checkpoint: dict[str, Any] = field(repr=False)
    utilization: float | None  # 0..1 from the response's headers/events, None when absent
    usage: dict[str, int]  # input_tokens / output_tokens when known


TurnOutcome = TurnResult | RateLimitSignal


@runtime_checkable
class Executor(Protocol):
    agent: str  # "claude-code" | "anthropic" | "openai", the keystore provider of its keys

    async def run_turn(
        self,
        lease: Lease,
        *,
        prompt: str,
        model: str | None,
        checkpoint: dict[str, Any] | None,
        report: Report | None = None,
        keep_partial: KeepPartial | None = None,
        gate: Gate | None = None,
    ) -> TurnOutcome: ...


def check_prompt(prompt: str) -> None:
    """Every provider refuses an empty turn; say so before spending a call (or a CLI start)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput("prompt: must be a non-empty string")


# agent -> "module:class", imported on first use so that one agent does not load the others' SDKs
_REGISTRY: dict[str, str] = {
    "claude-code": "flows.executors.claude_code:ClaudeCodeExecutor",
    "anthropic": "flows.executors.anthropic:AnthropicExecutor",
    "openai": "flows.executors.openai:OpenAIExecutor",
}
AGENTS: tuple[str, ...] = tuple(_REGISTRY)


def executor_for(agent: str, **options: Any) -> Executor:
    """A new executor for `agent`, configured with its keyword options (see each class).

    Raises InvalidInput (a ValueError) for an unknown agent or option."""
    try:
        module_name, _, class_name = _REGISTRY[agent].partition(":")
    except (KeyError, TypeError):
        raise InvalidInput(f"unknown agent {agent!r}; known: {', '.join(AGENTS)}") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    accepted = [
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidInput(
            f"unknown option(s) for {agent}: {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )
    executor: Executor = cls(**options)
    return executor
