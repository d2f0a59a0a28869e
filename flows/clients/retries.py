"""`retry_on_refusal`: the `retry_condition_fn` for a user's task that calls a provider through
`keyrelay_client`.

    @task(retries=6, retry_condition_fn=retry_on_refusal)
    async def ask(messages): ...

| the attempt raised                                  | retry?                                |
|-----------------------------------------------------|---------------------------------------|
| KeyRefused (rate/usage limit, spent quota, 401/403) | yes, at once: the keystore marked the |
|                                                     | key, so the next lease takes another  |
| LeaseLost (the block was cancelled)                 | yes, at once                          |
| ProviderBusy (overloaded, 5xx, unreachable, timeout)| yes, after a jittered backoff         |
| NoKeyAvailable                                      | no: the flow decides (`defer_until`)  |
| RequestRefused, anything else                       | no                                    |

Prefect applies one `retry_delay_seconds` schedule to every retry of a task, whatever failed, so
the backoff for a busy provider is slept here instead (Prefect 3.9 awaits an async retry
condition), after the task body has ended and its lease is back in the pool, while a refused key
rotates at once. Leave `retry_delay_seconds` unset, or it is added to both. `task.retries` caps
the attempts; the backoff follows `flows.retry_policy.TRANSIENT` (the same as `agent-run`'s), and
a reset the provider named (`retry-after` on a 529) is the least wait.

Prefect 3.9 pitfall, avoided here: in an async task, `state.result()` inside a retry condition
returns a coroutine instead of the exception, and a check written on it never retries.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import anyio
from prefect import get_run_logger
from prefect.client.schemas.objects import State, TaskRun
from prefect.exceptions import MissingContextError

from flows.clients.errors import KeyRefused, ProviderBusy
from flows.retry_policy import TRANSIENT, RetryPolicy
from keystore import LeaseLost, utcnow
from keystore.clock import Clock

__all__ = ["RetryOnRefusal", "retry_on_refusal"]

log = logging.getLogger(__name__)


class RetryOnRefusal:
    """A `retry_condition_fn`; `backoff` paces retries after a `ProviderBusy`."""

    def __init__(
        self,
        *,
        backoff: RetryPolicy = TRANSIENT,
        rng: random.Random | None = None,
        clock: Clock = utcnow,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.backoff = backoff
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"RetryOnRefusal(backoff={self.backoff!r})"

    async def __call__(self, task: Any, task_run: TaskRun, state: State[Any]) -> bool:
        error = _exception_of(state)
        if isinstance(error, KeyRefused | LeaseLost):
            return True
        if isinstance(error, ProviderBusy):
            delay_s = self.delay_s(error, attempt=max(1, task_run.run_count))
            _logger().warning("%s: retrying in %.1f s", error.message, delay_s)
            await self._sleep(delay_s)
            return True
        return False

    def delay_s(self, busy: ProviderBusy, *, attempt: int) -> float:
        """The backoff before retry `attempt` (1-based): the policy's jittered delay, at least
        until a reset the provider named, never beyond the policy's `max_delay_s`."""
        delay = self.backoff.delay_s(attempt, self._rng)
        named = busy.signal.resets_at if busy.signal is not None else None
        if named is not None:
            delay = max(delay, _seconds_until(named, self._clock()))
        return min(delay, self.backoff.max_delay_s)


def _seconds_until(when: datetime, now: datetime) -> float:
    return max(0.0, (when - now).total_seconds())


def _exception_of(state: State[Any]) -> BaseException | None:
    """The exception a failed attempt raised: the engine hands it over as the state's data. A
    state the task returned itself is read synchronously (plain `state.result()` would be a
    coroutine here)."""
    if isinstance(state.data, BaseException):
        return state.data
    try:
        result = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
    except Exception:
        return None
    return result if isinstance(result, BaseException) else None


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return log


retry_on_refusal = RetryOnRefusal()
