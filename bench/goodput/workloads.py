"""The three limit shapes a pool meets, each with the lower bound on makespan its limits impose.

- `requests`: every key has its own fixed window of 10 requests per 10 s (the window opens at
  its first request, as the emulator's `fixed` windows do);
- `input_tokens`: every key has an Anthropic-style input-token bucket (token_bucket.py), sized
  so the bucket binds: capacity = a sixteenth of all the input tokens the workload sends, refilled
  over 10 s, so the whole workload needs three refills;
- `org_group`: the four keys belong to one organisation and share one window of 40 requests per
  10 s (rotating between them cannot help).

All three give the same lower bound (three windows' waits, then one call), so their makespans
compare. `time_scale` shrinks every window (0.5: 10 requests per 5 s) to keep a run short.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

from api.emulator import LimitRule
from bench.goodput.conversation import input_costs

__all__ = ["JOBS", "KEYS", "TURNS", "LimitOwner", "Workload", "build_workloads"]

KEYS = 4
JOBS = 16
TURNS = 10
WINDOW_S = 10.0
REQUESTS_PER_WINDOW = 10
REPLY_DELAY_S = 0.1  # the "model" answers after this long, so calls overlap as real ones do


Kind = Literal["fixed", "token_bucket"]
Dimension = Literal["requests", "input_tokens"]


@dataclass(frozen=True)
class LimitOwner:
    """What the emulator counts against: one key, or a group of keys sharing one window."""

    name: str
    keys: tuple[str, ...]  # the secrets that draw on it
    kind: Kind
    dimension: Dimension
    cap: int
    window_s: float

    @property
    def refill_per_s(self) -> float:
        return self.cap / self.window_s


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    owners: tuple[LimitOwner, ...]
    group: str | None  # the keystore group of every key (an org-wide limit), if any
    jobs: int = JOBS
    turns: int = TURNS
    reply_delay_s: float = REPLY_DELAY_S

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for owner in self.owners for key in owner.keys)

    @property
    def calls(self) -> int:
        return self.jobs * self.turns

    def cost(self, job: int, turn: int) -> int:
        """Input tokens of call `turn` (1-based) of job `job`."""
        return _costs(job, self.turns)[turn - 1]

    def all_costs(self) -> list[int]:
        return [c for job in range(self.jobs) for c in _costs(job, self.turns)]

    def emulator_limits(self) -> list[LimitRule]:
        rules = []
        for owner in self.owners:
            caps = {owner.dimension: owner.cap}
            window = owner.kind
            if self.group is not None:
                prefix = _common_prefix(owner.keys)
                rules.append(
                    LimitRule(
                        key_prefix=prefix,
                        group=self.group,
                        window_s=owner.window_s,
                        window=window,
                        **caps,
                    )
                )
                continue
            for key in owner.keys:
                rules.append(LimitRule(key=key, window_s=owner.window_s, window=window, **caps))
        return rules

    def admitted_by(self, t_s: float) -> int:
        """An upper bound on the calls the limits can admit within `t_s` of the start (every
        window opening at the start; a bucket spending on the cheapest calls first)."""
        if t_s < 0:
            return 0
        kind = self.owners[0].kind
        if kind == "fixed":
            per_window = sum(o.cap for o in self.owners)
            return min(self.calls, per_window * (math.floor(t_s / self.owners[0].window_s) + 1))
        budget = sum(o.cap + o.refill_per_s * t_s for o in self.owners)
        admitted = 0
        for cost in sorted(self.all_costs()):
            if cost > budget:
                break
            budget -= cost
            admitted += 1
        return admitted

    def lower_bound_s(self) -> float:
        """No schedule finishes sooner. The emulator judges a call after its reply delay and
        answers right after, so a job's calls are judged at least one delay apart; then:

        - fixed windows: before (w - 1) windows have passed, at most (w - 1) windows' worth of
          calls can be admitted; the rest, spread over the jobs, leave some job with
          ceil(rest / jobs) calls after that, one after the other;
        - buckets: the last call cannot be admitted before the buckets have refilled enough for
          all the input tokens (spent on the cheapest calls first);
        - and no job's calls, one after the other, take less than `turns` reply delays.
        """
        kind = self.owners[0].kind
        per_window = sum(o.cap for o in self.owners)
        if kind == "fixed":
            windows = math.ceil(self.calls / per_window)
            last = self.calls - (windows - 1) * per_window
            in_turn = math.ceil(last / self.jobs) - 1
            admit_all = (windows - 1) * self.owners[0].window_s + in_turn * self.reply_delay_s
        else:
            spare = sum(self.all_costs()) - per_window
            admit_all = max(0.0, spare / sum(o.refill_per_s for o in self.owners))
        return max(admit_all, self.turns * self.reply_delay_s)


@functools.cache
def _costs(job: int, turns: int) -> list[int]:
    return input_costs(job, turns)


def _common_prefix(keys: tuple[str, ...]) -> str:
    prefix = keys[0]
    for key in keys[1:]:
        while not key.startswith(prefix):
            prefix = prefix[:-1]
    return prefix


def _secrets(workload: str) -> tuple[str, ...]:
    return tuple(f"sk-ant-api03-bench-{workload}-k{i}-" + "x" * 32 for i in range(KEYS))


def _per_key(
    name: str, title: str, kind: Kind, dimension: Dimension, cap: int, window_s: float
) -> Workload:
    """Every key its own limit."""
    owners = tuple(
        LimitOwner(f"key {i}", (key,), kind, dimension, cap, window_s)
        for i, key in enumerate(_secrets(name.replace("_", "-")))
    )
    return Workload(name=name, title=title, owners=owners, group=None)


def build_workloads(time_scale: float = 1.0) -> dict[str, Workload]:
    window_s = WINDOW_S * time_scale
    requests = _per_key(
        "requests",
        f"request windows: {REQUESTS_PER_WINDOW} per {window_s:g} s per key",
        "fixed",
        "requests",
        REQUESTS_PER_WINDOW,
        window_s,
    )
    # Sized so the bucket binds: all the input tokens need three refills beyond the full buckets.
    all_input = sum(sum(_costs(job, TURNS)) for job in range(JOBS))
    bucket = math.ceil(all_input / (4 * KEYS))
    input_tokens = _per_key(
        "input_tokens",
        f"input-token bucket: {bucket} per {window_s:g} s per key, refilling continuously",
        "token_bucket",
        "input_tokens",
        bucket,
        window_s,
    )
    org_cap = KEYS * REQUESTS_PER_WINDOW
    org_group = Workload(
        name="org_group",
        title=f"org-wide window: the {KEYS} keys share {org_cap} per {window_s:g} s",
        owners=(LimitOwner("org", _secrets("org"), "fixed", "requests", org_cap, window_s),),
        group="org",
    )
    return {w.name: w for w in (requests, input_tokens, org_group)}
