"""`defer_until`: what a user's flow does when a task found every key of a provider spent.

    try:
        reply = await ask(messages)
    except NoKeyAvailable as exhausted:
        await defer_until(exhausted)   # then call again

It decides as `agent-run` does (`flows.outcome.decide` with the pool's RotationConfig) and
applies the outcome with the same code (`flows.turn_loop.RunLoop`):

- every key merely in use, or a reset within `inline_wait_max_s`: wait in-process, return;
- a reset within `max_wait_s`, `auto_wait` on: a deployed run is queued behind the runs already
  waiting (`register_wait`), records `pool_waiting`, publishes the pool artifact, and reschedules
  itself as `Scheduled/AwaitingRateLimit` at the (staggered) reset, giving its worker back; it
  never returns, and the flow starts again from the top at the reset (persist the results of its
  tasks so completed calls come back from Prefect's cache). A run that is not deployed waits
  in-process instead, as nothing would pick it up again;
- otherwise (auto_wait off, no reset known, beyond max_wait_s): `RunFailed`, naming the keys and
  their resets, recorded as `pool_exhausted`.
"""

from __future__ import annotations

from prefect.context import FlowRunContext, TaskRunContext

from flows.blocking import in_thread
from flows.outcome import decide
from flows.runtime import flow_keystore
from flows.turn_loop import RunLoop
from keystore import Keystore, NoKeyAvailable

__all__ = ["defer_until"]


async def defer_until(exhausted: NoKeyAvailable, *, store: Keystore | None = None) -> None:
    """Wait for, or give the worker back until, the moment `exhausted` says a key may be free.

    Call it from the flow body (not from a task: a task cannot reschedule its flow run)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or TaskRunContext.get() is not None:
        raise RuntimeError("defer_until must be called from a flow body, not from a task")
    store = store or flow_keystore()
    deployed = context.flow_run.deployment_id is not None
    outcome = decide(
        exhausted,
        config=await in_thread(store.config),
        now=store.now(),
        provider=exhausted.provider,
        can_defer=deployed,
    )
    loop = RunLoop(
        store,
        run_id=str(context.flow_run.id),
        agent=exhausted.provider,
        model=None,
        deployed=deployed,
    )
    await loop.apply(outcome, exhausted.provider)  # RunLoop applies outcomes, for agent-run too
