"""keyrelay's pool API, as a user's own code would call it for every call of a job:

    lease = ks.acquire(provider="anthropic", holder=job, input_tokens=estimate)
    ... the call with lease.secret() ...
    ks.record_response(lease.key_id, provider=..., status=..., headers=..., body=...,
                       received_at=...)
    ks.release(lease)

`NoKeyAvailable` sleeps until its `retry_at`; a refusal is recorded like any answer and the call
is tried again at once (the next acquire picks another key). The keystore is synchronous, so its
calls run on a thread pool with a thread per job (a smaller pool would queue them, and that queue
would count as keyrelay's latency). The estimate is the exact input-token count (conversation.py).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from bench.goodput.conversation import Message
from bench.goodput.provider import Answer
from bench.goodput.systems import keystore_calls
from bench.goodput.systems.base import HttpSystem, RunSpec
from bench.goodput.trace import Trace
from keystore import Keystore, Lease, MasterKey, NoKeyAvailable
from keystore.db import create_keystore_engine

__all__ = ["KeyrelayPool"]

PROVIDER = "anthropic"
_NO_RETRY_AT_S = 0.05  # NoKeyAvailable without a time (or one already past): look again soon
T = TypeVar("T")


class KeyrelayPool(HttpSystem):
    label = "keyrelay pool API"

    def __init__(self, spec: RunSpec) -> None:
        super().__init__(spec)
        assert spec.keystore_url is not None and spec.master_key is not None
        engine = create_keystore_engine(spec.keystore_url)
        self.ks = Keystore(engine, MasterKey([spec.master_key.encode()]))
        self._threads = ThreadPoolExecutor(max_workers=self.workload.jobs, thread_name_prefix="ks")

    async def _in_thread(self, call: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(call, *args, **kwargs))

    async def open(self) -> None:
        await super().open()
        self.ks.config()  # connect and read the config once, as a long-running worker would have
        lease, _slept = await self._lease("warm-up", 1)
        await self._in_thread(self.ks.release, lease)

    async def close(self) -> None:
        await super().close()
        self._threads.shutdown()
        self.ks.close()

    def annotate(self, trace: Trace) -> None:
        trace.keystore_path = keystore_calls.path(self.ks)

    async def _lease(self, holder: str, estimate: int) -> tuple[Lease, float]:
        """Acquire, sleeping out every NoKeyAvailable; the lease and the seconds slept."""
        slept = 0.0
        while True:
            try:
                lease = await self._in_thread(
                    keystore_calls.acquire,
                    self.ks,
                    provider=PROVIDER,
                    holder=holder,
                    input_tokens=estimate,
                )
                return lease, slept
            except NoKeyAvailable as exhausted:
                before = time.perf_counter()
                await asyncio.sleep(_seconds_until(exhausted.retry_at))
                slept += time.perf_counter() - before

    async def attempt(self, job: int, messages: list[Message], cost: int, trace: Trace) -> Answer:
        wanted = time.perf_counter()
        lease, slept = await self._lease(f"job-{job:02d}", cost)
        secret = lease.secret()
        trace.added_s.append(time.perf_counter() - wanted - slept)
        try:
            answer = await self.send(secret, messages)
        except BaseException:
            await self._in_thread(self.ks.release, lease)
            raise
        answered = time.perf_counter()
        await self._in_thread(
            keystore_calls.record_response,
            self.ks,
            lease.key_id,
            provider=PROVIDER,
            status=answer.status,
            headers=answer.headers,
            body=answer.body,
            received_at=answer.received_at,
        )
        await self._in_thread(self.ks.release, lease)
        trace.bookkeeping_s.append(time.perf_counter() - answered)
        return answer


def _seconds_until(retry_at: datetime | None) -> float:
    if retry_at is None:
        return _NO_RETRY_AT_S
    return max(_NO_RETRY_AT_S, (retry_at - datetime.now(UTC)).total_seconds())
