"""Scripted faults: which one, if any, a request runs into."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from api.emulator.config import FAULT_PROVIDERS, FaultRule
from api.emulator.keys import Credential

__all__ = ["FaultSchedule"]


@dataclass
class _Armed:
    rule: FaultRule
    remaining: int | None
    # One generator per rule, so a rule's draws do not depend on traffic to other rules.
    rng: random.Random = field(repr=False)


class FaultSchedule:
    """The configured faults in order; the first matching rule that fires wins."""

    def __init__(self, rules: list[FaultRule]) -> None:
        self._armed = [_Armed(r, r.times, random.Random(r.seed)) for r in rules]

    @property
    def rules(self) -> list[FaultRule]:
        return [armed.rule for armed in self._armed]

    def next_fault(self, *, credential: Credential, provider: str) -> FaultRule | None:
        for armed in self._armed:
            rule = armed.rule
            if provider not in FAULT_PROVIDERS[rule.kind]:
                continue
            if rule.provider is not None and rule.provider != provider:
                continue
            if not rule.matches(secret=credential.secret, key_fingerprint=credential.fingerprint):
                continue
            if armed.remaining == 0:
                continue
            # Draw only for matching requests, so the sequence is reproducible per rule.
            if rule.probability < 1.0 and armed.rng.random() >= rule.probability:
                continue
            if armed.remaining is not None:
                armed.remaining -= 1
            return rule
        return None
