"""The oracle: knows every key's limit and schedules calls so that none is refused.

Every call asks the scheduler for room; among the owners that can take it now (the emptiest
first) it gets a key at once, otherwise it waits until the earliest moment one could, or until
an answer tells a fixed window's close. It never reads a rate-limit header. Its makespan is
the best this harness can reach; the lower bound (workloads.py) is the best any schedule could.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

from bench.goodput.conversation import Message
from bench.goodput.provider import Answer
from bench.goodput.systems.base import HttpSystem
from bench.goodput.systems.oracle_models import Grant, OwnerModel, model_for
from bench.goodput.trace import Trace

__all__ = ["Oracle", "OracleScheduler"]


class OracleScheduler:
    def __init__(self, models: list[OwnerModel]) -> None:
        self.models = models
        self._changed = asyncio.Condition()

    async def admit(self, cost: int) -> Grant:
        async with self._changed:
            while True:
                now = time.time()
                retry_at = math.inf
                for model in sorted(self.models, key=lambda m: m.room(now), reverse=True):
                    taken = model.take(cost, now)
                    if isinstance(taken, Grant):
                        return taken
                    retry_at = min(retry_at, taken)
                timeout = None if retry_at == math.inf else max(0.0, retry_at - time.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout)

    async def answered(self, grant: Grant, at: float) -> None:
        async with self._changed:
            grant.model.answered(grant, at)
            self._changed.notify_all()


class Oracle(HttpSystem):
    label = "oracle (knows the limits)"

    async def open(self) -> None:
        await super().open()
        delay = self.workload.reply_delay_s
        self.scheduler = OracleScheduler(
            [model_for(owner, reply_delay_s=delay) for owner in self.workload.owners]
        )

    async def attempt(self, job: int, messages: list[Message], cost: int, trace: Trace) -> Answer:
        grant = await self.scheduler.admit(cost)
        answer = await self.send(grant.key, messages)
        await self.scheduler.answered(grant, time.time())
        return answer
