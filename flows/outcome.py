"""What happens after one attempt at a turn: one value, decided by one pure function.

An attempt ends in an *event*: the executor's result, the limit signal it read, the error it
raised, a lost lease, or the pool's `NoKeyAvailable`. `decide` turns the event, what the keystore
marked about it and RotationConfig into an *outcome*; `flows/turn_loop.py` is the one place that
applies outcomes. Every row of this table is a case in tests/flows/test_outcome.py:

| event                                            | keystore marked       | outcome             |
|--------------------------------------------------|-----------------------|---------------------|
| a result                                         | -                     | Served              |
| rate_limit / usage_limit / quota with a reset    | key or group cooling  | Rotate              |
| a quota only a person lifts (billing, contract)  | key unusable          | Rotate              |
| 429s without reset on many keys (IP-wide)        | every key cooling     | Rotate (pool rules) |
| key rejected (401/403)                           | key unusable          | Rotate              |
| lease lost (the attempt was cancelled)           | -                     | Rotate              |
| overloaded, 5xx, connection failure, timeout     | -                     | Backoff, later      |
|                                                  |                       | Defer, then Fail    |
| the CLI ended without a result                   | -                     | Backoff, then Fail  |
| request too large / another 4xx / no session     | -                     | Fail                |
| no key: every usable key leased (all_busy)       | -                     | WaitInline (poll)   |
| no key: reset within inline_wait_max_s           | -                     | WaitInline          |
| no key: fallback on and the fallback has a key   | -                     | Fallback            |
| no key: auto_wait on, reset within max_wait_s    | -                     | Defer (WaitInline   |
|                                                  |                       | if not deployed)    |
| no key: otherwise (auto_wait off, too far, none) | -                     | Fail, naming keys   |
| more than MAX_ROTATIONS rotations in one turn    | -                     | Fail                |

Rotation and backoff budgets count per turn (`Tally`) and travel in the run's checkpoint, so a
deferred run does not start its budgets afresh.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal

from flows.executors.base import TurnResult
from flows.executors.errors import (
    AgentFailed,
    ExecutorError,
    KeyRejected,
    ProviderUnavailable,
    SessionNotFound,
)
from flows.retry_policy import AGENT_CRASH, TRANSIENT, RetryPolicy
from keystore import LeaseLost, Marked, NoKeyAvailable, RateLimitSignal, RotationConfig

__all__ = [
    "BUSY_POLL_S",
    "MAX_ROTATIONS",
    "Backoff",
    "Defer",
    "Event",
    "Fail",
    "Fallback",
    "Outcome",
    "Rotate",
    "Served",
    "Tally",
    "WaitInline",
    "decide",
]

BUSY_POLL_S = 0.25  # a busy pool frees a slot whenever a holder releases: look again soon
MAX_ROTATIONS = 100  # every rotation cools a key, so a pool runs dry long before this

Event = TurnResult | RateLimitSignal | ExecutorError | LeaseLost | NoKeyAvailable
Budget = Literal["transient", "agent_crash"]
_POLICIES: Mapping[Budget, RetryPolicy] = MappingProxyType(
    {"transient": TRANSIENT, "agent_crash": AGENT_CRASH}
)


@dataclass(frozen=True)
class Served:
    result: TurnResult


@dataclass(frozen=True)
class Rotate:
    from_key: int
    why: str


@dataclass(frozen=True)
class Backoff:
    delay_s: float
    why: str
    budget: Budget


@dataclass(frozen=True)
class WaitInline:
    until: datetime
    why: str


@dataclass(frozen=True)
class Defer:
    until: datetime
    why: str
    provider: str
    budget: Budget | None = None  # set when a provider outage, not the pool, is waited out


@dataclass(frozen=True)
class Fallback:
    provider: str
    why: str


@dataclass(frozen=True)
class Fail:
    why: str
    exhausted: bool = False  # the pool had nothing left (recorded as pool_exhausted)


Outcome = Served | Rotate | Backoff | WaitInline | Defer | Fallback | Fail


@dataclass(frozen=True)
class Tally:
    """What one turn has used up so far: rotations, and failures per backoff budget."""

    rotations: int = 0
    transient: int = 0
    agent_crash: int = 0

    def after(self, outcome: Outcome) -> Tally:
        if isinstance(outcome, Rotate):
            return replace(self, rotations=self.rotations + 1)
        budget = outcome.budget if isinstance(outcome, Backoff | Defer) else None
        if budget == "transient":
            return replace(self, transient=self.transient + 1)
        if budget == "agent_crash":
            return replace(self, agent_crash=self.agent_crash + 1)
        return self


def decide(
    event: Event,
    *,
    config: RotationConfig,
    now: datetime,
    provider: str = "",
    key_id: int | None = None,
    marked: Marked | None = None,
    tally: Tally = Tally(),
    rng: random.Random | None = None,
    fallback_ready: bool = False,
    can_defer: bool = True,
) -> Outcome:
    """The outcome of `event`, which happened on `provider`'s key `key_id` (None when no key was
    leased).

    `marked` is what the keystore did about a limit signal or a rejected key; `fallback_ready`
    says the fallback provider has a key now; `can_defer` is False for a run nothing would pick
    up again (not deployed): a deferral becomes an in-process wait."""
    if isinstance(event, TurnResult):
        return Served(event)
    if isinstance(event, NoKeyAvailable):
        return _exhausted(
            event, config=config, now=now, fallback_ready=fallback_ready, defer=can_defer
        )
    backoff = _Backoffs(provider=provider, tally=tally, now=now, rng=rng, defer=can_defer)
    outcome: Outcome
    if isinstance(event, RateLimitSignal):
        outcome = _limited(event, key=_required(key_id), marked=marked, backoff=backoff)
    elif isinstance(event, LeaseLost):
        outcome = Rotate(_required(key_id), f"lease {event.lease_id} was lost mid-call")
    elif isinstance(event, KeyRejected):
        outcome = Rotate(_required(key_id), event.message)
    elif isinstance(event, ProviderUnavailable):
        outcome = backoff("transient", event.message)
    elif isinstance(event, SessionNotFound):
        outcome = Fail(f"the run's checkpoint could not be resumed: {event.message}")
    elif isinstance(event, AgentFailed):
        outcome = backoff("agent_crash", event.message)
    else:  # RequestRejected and any other ExecutorError: the request itself is wrong
        outcome = Fail(event.message)
    if isinstance(outcome, Rotate) and tally.rotations >= MAX_ROTATIONS:
        return Fail(f"rotated {tally.rotations} times in one turn without being served")
    return outcome


def _required(key_id: int | None) -> int:
    if key_id is None:
        raise ValueError("an event from a provider call needs the key it happened on")
    return key_id


@dataclass(frozen=True)
class _Backoffs:
    """Backoff outcomes for one decision: the budget's next delay, a deferral once the inline
    attempts are used up (when the run can be deferred), a failure once the budget is spent."""

    provider: str
    tally: Tally
    now: datetime
    rng: random.Random | None
    defer: bool

    def __call__(self, budget: Budget, why: str, *, at_least_s: float = 0.0) -> Outcome:
        policy = _POLICIES[budget]
        used = getattr(self.tally, budget)
        if used >= policy.max_attempts:
            return Fail(f"gave up after {used} failed attempts: {why}")
        if used >= policy.inline_attempts and self.defer and budget == "transient":
            until = self.now + timedelta(seconds=policy.max_delay_s)
            return Defer(until, f"the provider is unavailable: {why}", self.provider, budget)
        delay = policy.delay_s(used + 1, self.rng or random.Random())
        return Backoff(max(delay, min(at_least_s, policy.max_delay_s)), why, budget)


def _limited(
    signal: RateLimitSignal, *, key: int, marked: Marked | None, backoff: _Backoffs
) -> Outcome:
    if signal.kind == "request_too_large":
        return Fail(
            f"key {key}: the request is larger than the provider's limit ({signal.source}); "
            "no key can serve it"
        )
    if signal.kind == "overloaded":
        # Not the key's fault: backed off like any transient failure; a reset the provider
        # named is the least wait.
        named = (signal.resets_at - backoff.now).total_seconds() if signal.resets_at else 0.0
        return backoff(
            "transient", f"key {key}: provider overloaded ({signal.source})", at_least_s=named
        )
    until = marked.cooling_until if marked is not None else signal.resets_at
    when = until.isoformat(timespec="seconds") if until else "a probe cooldown"
    return Rotate(key, f"key {key}: {signal.kind} until {when} ({signal.source})")


def _exhausted(
    exhausted: NoKeyAvailable,
    *,
    config: RotationConfig,
    now: datetime,
    fallback_ready: bool,
    defer: bool,
) -> Outcome:
    provider = exhausted.provider
    keys = "; ".join(exhausted.detail) or "no keys"
    retry_at = exhausted.retry_at
    if exhausted.reason == "all_busy" and retry_at is not None:
        # Leases end when their holders finish, usually long before they expire.
        poll = min(retry_at, now + timedelta(seconds=BUSY_POLL_S))
        return WaitInline(poll, f"every {provider} key is in use")
    if fallback_ready and config.fallback_enabled and config.fallback_provider != provider:
        return Fallback(config.fallback_provider, f"every {provider} key is spent")
    if retry_at is None:
        return Fail(f"no {provider} key can be used ({exhausted.reason}): {keys}", exhausted=True)
    if not config.auto_wait:
        return Fail(
            f"every {provider} key is rate-limited and auto_wait is off: {keys}", exhausted=True
        )
    wait_s = max(0.0, (retry_at - now).total_seconds())
    why = f"every {provider} key is spent ({exhausted.reason}): {keys}"
    if wait_s <= config.inline_wait_max_s:
        return WaitInline(retry_at, why)
    if wait_s <= config.max_wait_s:
        return Defer(retry_at, why, provider) if defer else WaitInline(retry_at, why)
    return Fail(
        f"every {provider} key is spent until {retry_at.isoformat(timespec='seconds')}, "
        f"{wait_s:.0f} s away, beyond max_wait_s={config.max_wait_s:g}: {keys}",
        exhausted=True,
    )
