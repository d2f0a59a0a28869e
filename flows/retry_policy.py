"""How long a turn backs off after a failure that is nobody's key's fault, as data with hard caps.

Two budgets per turn, counted separately from rate limits (a rotation is not a failure):

- `transient`: the provider is overloaded (529), answered 5xx, dropped the connection or timed
  out. The first `inline_attempts` back off in-process with exponential delays and full jitter
  (so parallel runs do not retry in lockstep); later ones give the worker back for `max_delay_s`
  when the run can be deferred; after `max_attempts` the run fails, naming the last error.
- `agent_crash`: the `claude` CLI ended without a result for no reason the API gave. That is as
  often a bad option as a flaky process, so only a few quick retries.

A plain dataclass rather than `tenacity`/`stamina`: those drive a retry loop around a call, and
here the loop is the flow's (the sleep must happen after the lease is released, and the count
must survive a deferral in the run's checkpoint); only the arithmetic would be borrowed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["AGENT_CRASH", "TRANSIENT", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    first_delay_s: float
    max_delay_s: float
    inline_attempts: int  # attempts backed off in-process; later ones may be deferred
    max_attempts: int  # hard cap: the next failure fails the run

    def __post_init__(self) -> None:
        if not 0 < self.first_delay_s <= self.max_delay_s:
            raise ValueError("need 0 < first_delay_s <= max_delay_s")
        if not 1 <= self.inline_attempts <= self.max_attempts:
            raise ValueError("need 1 <= inline_attempts <= max_attempts")

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """Full jitter over an exponential cap: uniform in [cap/2, cap] for the `attempt`-th
        failure (1-based), so a burst of runs spreads out but none retries at once."""
        cap = min(self.max_delay_s, self.first_delay_s * 2 ** max(0, attempt - 1))
        return rng.uniform(cap / 2, cap)


TRANSIENT = RetryPolicy(first_delay_s=1.0, max_delay_s=60.0, inline_attempts=6, max_attempts=20)
AGENT_CRASH = RetryPolicy(first_delay_s=1.0, max_delay_s=4.0, inline_attempts=3, max_attempts=3)
