"""`leased_key`: hold one key of a provider for the length of an async block, and never past it.

    async with leased_key("anthropic", holder="my-job") as lease:
        client = AsyncAnthropic(api_key=lease.secret(), max_retries=0)

Leases inside the block (never pass a secret as a Prefect parameter or task input), renews at a
third of the TTL while the block runs, and releases in `finally`, also on cancellation.

Lease loss is an error, not a flag (Prefect's `maintain_concurrency_lease` is the model): when a
renewal says the lease is gone, or renewals keep failing until shortly before it expires, the
block is cancelled before the slot can be handed to anyone else, and `LeaseLost` is raised. A
holder cut off from the database therefore stops calling the provider with a key whose slot is
about to be someone else's, and the max_concurrency invariant holds for what actually runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from flows.blocking import in_thread
from flows.runtime import flow_keystore
from keystore import Keystore, Lease, LeaseLost

__all__ = ["leased_key", "renewal_margin_s"]

log = logging.getLogger(__name__)
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 10.0


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger inside a flow or task run (so the UI shows it), else this module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log


def renewal_margin_s(ttl_s: float) -> float:
    """How long before expiry a lease that could not be renewed stops its holder's work: enough
    for the work to be cancelled (a CLI's process group killed, a request dropped) before the
    slot becomes anyone else's."""
    return min(max(1.0, ttl_s / 10), 15.0)


@asynccontextmanager
async def leased_key(
    provider: str,
    *,
    holder: str,
    ttl_s: float | None = None,
    store: Keystore | None = None,
    prefer_key: int | None = None,
    input_tokens: int | None = None,
) -> AsyncIterator[Lease]:
    """Raises keystore.NoKeyAvailable when no key can be leased now, and LeaseLost when the
    block had to be cancelled because its lease could not be kept. `prefer_key`: the key this
    holder used last (kept while it can serve); `input_tokens`: the request's estimated size
    (a key whose token buckets cannot hold it is passed over)."""
    store = store or flow_keystore()
    ttl = ttl_s if ttl_s is not None else (await in_thread(store.config)).lease_ttl_s
    lease = await in_thread(
        store.acquire,
        provider=provider,
        holder=holder,
        ttl_s=ttl,
        prefer_key=prefer_key,
        input_tokens=input_tokens,
    )
    error: Exception | None = None
    held = anyio.CancelScope()
    try:
        async with anyio.create_task_group() as keeper:
            with held:
                keeper.start_soon(_keep_renewed, store, lease, ttl, held)
                try:
                    yield lease
                except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
                    error = exc
            keeper.cancel_scope.cancel()
        if held.cancelled_caught:
            _logger().warning(
                "stopped the work on key %s (%s): its lease %s could not be kept",
                lease.key_id,
                lease.key_name,
                lease.id,
            )
    finally:
        with anyio.CancelScope(shield=True):
            await in_thread(store.release, lease)
    if error is not None:
        raise error
    if held.cancelled_caught:
        raise LeaseLost(lease.id)


async def _keep_renewed(
    store: Keystore, lease: Lease, ttl_s: float, held: anyio.CancelScope
) -> None:
    """Renew every third of the TTL; cancel `held` when the lease is gone or about to expire
    unrenewed. Renewal calls are abandoned (not awaited) at the deadline: a database that does
    not answer must not keep the holder's work running."""
    margin = renewal_margin_s(ttl_s)

    def deadline_of(renewed: Lease) -> float:
        # From the lease's own expiry (on the keystore's clock), not from when this task got to
        # run: the event loop may have been busy since the lease was taken.
        left_s = (renewed.expires_at - store.now()).total_seconds()
        return anyio.current_time() + left_s - margin

    deadline = deadline_of(lease)
    next_renewal = anyio.current_time() + ttl_s / 3
    failures = 0
    while True:
        await anyio.sleep(max(0.0, min(next_renewal, deadline) - anyio.current_time()))
        sent_at = anyio.current_time()
        if sent_at >= deadline:
            _logger().error(
                "lease %s on key %s could not be renewed in time", lease.id, lease.key_id
            )
            held.cancel()
            return
        try:
            with anyio.fail_after(deadline - sent_at):
                await anyio.to_thread.run_sync(
                    lambda: store.renew(lease, ttl_s), abandon_on_cancel=True
                )
        except LeaseLost:
            _logger().error("lease %s on key %s was lost", lease.id, lease.key_id)
            held.cancel()
            return
        except Exception as exc:  # the database did not answer, or answered with an error
            failures += 1
            delay = min(_RETRY_MAX_S, _RETRY_FIRST_S * 2 ** (failures - 1))
            log.warning("renewing lease %s failed (%s); retrying in %.1f s", lease.id, exc, delay)
            next_renewal = anyio.current_time() + delay
            continue
        failures = 0
        deadline = deadline_of(lease)
        next_renewal = sent_at + ttl_s / 3
