"""`leased_key`: hold one key of a provider for the length of an async block.

    async with leased_key("anthropic", holder="my-job") as lease:
        client = AsyncAnthropic(api_key=lease.secret(), max_retries=0)

Leases inside the block (never pass a secret as a Prefect parameter or task input), renews at a
third of the TTL while the block runs, and releases in `finally`, also on cancellation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from flows.runtime import flow_keystore, in_thread
from keystore import Keystore, Lease, NoKeyAvailable

__all__ = ["leased_key"]


@asynccontextmanager
async def leased_key(
    provider: str,
    *,
    holder: str,
    ttl_s: float | None = None,
    store: Keystore | None = None,
    busy_poll_s: float | None = None,
) -> AsyncIterator[Lease]:
    """Raises keystore.NoKeyAvailable when no key can be leased now. With `busy_poll_s`, a pool
    that is merely busy (every usable key leased by someone else) is waited for, polling: leases
    end when their holders finish, so that is a queue, not a limit."""
    store = store or flow_keystore()
    while True:
        try:
            lease = await in_thread(store.acquire, provider=provider, holder=holder, ttl_s=ttl_s)
            break
        except NoKeyAvailable as exhausted:
            if busy_poll_s is None or exhausted.reason != "all_busy":
                raise
            await anyio.sleep(busy_poll_s)
    keeper = store.keep_alive(lease, ttl_s=ttl_s)
    try:
        yield lease
    finally:
        with anyio.CancelScope(shield=True):
            await in_thread(keeper.stop)
            await in_thread(store.release, lease)
