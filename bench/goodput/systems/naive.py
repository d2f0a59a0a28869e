"""Naive rotation: round-robin over the keys; on a 429 the call goes to the next key at once.
Only when every key has refused within `SPAN_S` does a call sleep, for the smallest retry-after
among those refusals. It learns nothing else from the headers."""

from __future__ import annotations

import asyncio
import time

from bench.goodput.conversation import Message
from bench.goodput.provider import Answer
from bench.goodput.systems.base import HttpSystem
from bench.goodput.trace import Trace

__all__ = ["NaiveRotation"]

SPAN_S = 2.0
_NO_HINT_S = 1.0


class NaiveRotation(HttpSystem):
    label = "naive rotation"

    async def open(self) -> None:
        await super().open()
        self._next = 0
        self._refused: dict[str, tuple[float, float]] = {}  # key -> (refused at, retry at)

    async def attempt(self, job: int, messages: list[Message], cost: int, trace: Trace) -> Answer:
        await self._sleep_if_every_key_refused()
        keys = self.workload.keys
        key = keys[self._next % len(keys)]
        self._next += 1
        answer = await self.send(key, messages)
        if answer.status == 429:
            now = time.time()
            self._refused[key] = (now, now + (answer.retry_after_s() or _NO_HINT_S))
        return answer

    async def _sleep_if_every_key_refused(self) -> None:
        now = time.time()
        recent = [retry for at, retry in self._refused.values() if now - at <= SPAN_S]
        if len(recent) < len(self.workload.keys):
            return
        self._refused.clear()  # the first to notice sleeps; the others find an empty record
        await asyncio.sleep(max(0.0, min(recent) - now))
