"""Executors: one turn of an agent's conversation on one leased key (see base.py).

    from flows.executors import executor_for, TurnResult
    outcome = await executor_for("claude-code").run_turn(lease, prompt=..., model=None,
                                                         checkpoint=None)

The agents' modules (and their SDKs) are imported on first use by `executor_for`.
"""

from flows.executors.base import AGENTS, Executor, TurnOutcome, TurnResult, executor_for
from flows.executors.errors import (
    AgentFailed,
    ExecutorError,
    KeyRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RequestRejected,
    SessionNotFound,
)

__all__ = [
    "AGENTS",
    "AgentFailed",
    "Executor",
    "ExecutorError",
    "KeyRejected",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RequestRejected",
    "SessionNotFound",
    "TurnOutcome",
    "TurnResult",
    "executor_for",
]
