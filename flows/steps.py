"""The keyed step: one attempt at one turn of an agent conversation, as a Prefect task.

    load the run's checkpoint -> lease (the run's last key if it can serve) -> execute (SDK /
    CLI retries off) -> tell the keystore what the provider said -> save the checkpoint ->
    release -> decide the outcome (flows/outcome.py)

The attempt never sleeps, waits or retries: it returns its `Outcome`, and the flow's turn loop
(flows/turn_loop.py) applies it, so every wait happens after the lease is released. The task
run ends in a state named for the outcome (`Rotated`, `BackingOff`, ...), so the Prefect UI shows
each attempt. What one attempt hands the next (budgets, the key that refused) is in the run's
checkpoint in the keystore, never in this process.
"""

from __future__ import annotations

import random
from types import MappingProxyType
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from flows.blocking import in_thread
from flows.checkpoint import RunCheckpoint, TurnRecord, load_checkpoint, save_checkpoint
from flows.executors import Executor, ExecutorError, KeyRejected, TurnResult, executor_for
from flows.leasing import leased_key
from flows.outcome import (
    Backoff,
    Defer,
    Event,
    Fail,
    Fallback,
    Outcome,
    Rotate,
    Served,
    WaitInline,
    decide,
)
from flows.responses import ResponseRecorder
from flows.runtime import flow_keystore
from keystore import (
    Keystore,
    Lease,
    LeaseLost,
    Marked,
    NoKeyAvailable,
    RateLimitSignal,
    RotationConfig,
    Settings,
)

__all__ = ["STATE_NAMES", "agent_turn"]

STATE_NAMES = MappingProxyType(
    {
        Served: "Completed",
        Rotate: "Rotated",
        Backoff: "BackingOff",
        WaitInline: "Waiting",
        Defer: "Deferring",
        Fallback: "FallingBack",
        Fail: "GaveUp",
    }
)


def _executor_options(agent: str, run_id: str) -> dict[str, Any]:
    if agent == "claude-code":
        # A stable working directory per run on this machine: an agent's files survive turns.
        workdir = Settings().home / "runs" / run_id
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return {"workdir": workdir}
    return {}


async def _call(
    executor: Executor,
    lease: Lease,
    *,
    prompt: str,
    model: str | None,
    checkpoint: dict[str, Any] | None,
    recorder: ResponseRecorder,
) -> TurnResult | RateLimitSignal | ExecutorError:
    try:
        outcome = await executor.run_turn(
            lease, prompt=prompt, model=model, checkpoint=checkpoint, report=recorder
        )
    except ExecutorError as failed:
        return failed
    if isinstance(outcome, RateLimitSignal) and recorder.refusal is not None:
        return recorder.refusal  # what the provider's own response said, reset included
    return outcome


async def _tell_keystore(
    store: Keystore, lease: Lease, event: Event, *, run_id: str, recorder: ResponseRecorder
) -> Marked | None:
    """What the provider said goes into the keystore before the lease is released. Responses are
    recorded as they arrive (ResponseRecorder); what remains: a limit only the agent's own output
    told of, and a key the provider rejected."""
    if isinstance(event, RateLimitSignal) and event.cools_key and recorder.refusal is None:
        return await in_thread(store.mark_limited, lease.key_id, event, run_id=run_id)
    if isinstance(event, KeyRejected):
        reason = f"rejected by the provider: {event.message}"
        await in_thread(store.mark_unusable, lease.key_id, reason, run_id=run_id)
    return None


async def _fallback_ready(store: Keystore, event: Event, config: RotationConfig) -> bool:
    if not (isinstance(event, NoKeyAvailable) and config.fallback_enabled):
        return False
    if event.reason == "all_busy" or config.fallback_provider == event.provider:
        return False
    return (await in_thread(store.explain, config.fallback_provider)).chosen is not None


@task(name="agent-turn", task_run_name="turn {turn} on {agent}", cache_policy=NO_CACHE)
async def agent_turn(
    *,
    agent: str,
    prompt: str,
    turn: int,
    run_id: str,
    model: str | None = None,
    can_defer: bool = True,
) -> State[Outcome]:
    """One attempt at turn `turn` of run `run_id` on a leased `agent` key."""
    store = flow_keystore()
    config = await in_thread(store.config)
    checkpoint: RunCheckpoint = await in_thread(load_checkpoint, store, run_id)
    progress = checkpoint.progress_of(turn)
    state, send = checkpoint.executor_input(agent, prompt)
    holder = f"flow-run {run_id} turn {turn}"
    # Built before the lease: the first one imports its SDK, which takes a while.
    executor = executor_for(agent, **_executor_options(agent, run_id))
    key_id: int | None = None
    marked: Marked | None = None
    event: Event
    try:
        async with leased_key(
            agent,
            holder=holder,
            store=store,
            prefer_key=checkpoint.last_keys.get(agent),
            input_tokens=checkpoint.input_tokens(agent, send),
        ) as lease:
            key_id = lease.key_id
            if progress.refused_key not in (None, key_id):
                await in_thread(
                    store.record,
                    "key_rotated",
                    key_id=key_id,
                    run_id=run_id,
                    from_key=progress.refused_key,
                    turn=turn,
                )
            recorder = ResponseRecorder(store, key_id=key_id, provider=agent, run_id=run_id)
            event = await _call(
                executor, lease, prompt=send, model=model, checkpoint=state, recorder=recorder
            )
            marked = await _tell_keystore(store, lease, event, run_id=run_id, recorder=recorder)
            if isinstance(event, TurnResult):  # checkpoint first, then release
                record = TurnRecord(
                    turn=turn,
                    agent=agent,
                    key_id=lease.key_id,
                    key_name=lease.key_name,
                    prompt=prompt,
                    text=event.text,
                    usage=event.usage,
                )
                checkpoint = checkpoint.with_turn(record, event.checkpoint)
                await in_thread(save_checkpoint, store, run_id, checkpoint)
    except LeaseLost as lost:
        event = lost
    except NoKeyAvailable as exhausted:
        event = exhausted
    outcome = decide(
        event,
        config=config,
        now=store.now(),
        provider=agent,
        key_id=key_id,
        marked=marked,
        tally=progress.tally,
        rng=random.Random(),
        fallback_ready=await _fallback_ready(store, event, config),
        can_defer=can_defer,
    )
    if not isinstance(outcome, Served):
        refused = outcome.from_key if isinstance(outcome, Rotate) else progress.refused_key
        after = progress.after(progress.tally.after(outcome), refused_key=refused)
        await in_thread(
            save_checkpoint, store, run_id, checkpoint.model_copy(update={"progress": after})
        )
    return Completed(data=outcome, name=STATE_NAMES[type(outcome)], message=_why(outcome))


def _why(outcome: Outcome) -> str | None:
    if isinstance(outcome, Served):
        return None
    return outcome.why[:2000]
