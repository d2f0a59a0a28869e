"""The keyed step: one attempt at one turn of an agent conversation, as a Prefect task.

    load the run's checkpoint -> lease (the run's last key if it can serve) -> execute (SDK /
    CLI retries off; every provider response to the keystore as it arrives) -> tell the keystore
    the rest -> save the checkpoint -> release -> decide the outcome (flows/outcome.py)

The attempt never sleeps, waits or retries: it returns its `Outcome`, and the flow's turn loop
(flows/turn_loop.py) applies it, so every wait happens after the lease is released. The task
run ends in a state named for the outcome (`Rotated`, `BackingOff`, ...), so the Prefect UI shows
each attempt. What one attempt hands the next (budgets, the key that refused, the part of the
turn an interrupted agent got done) is in the run's checkpoint in the keystore, never in this
process.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import MappingProxyType
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from flows.blocking import in_thread
from flows.checkpoint import (
    RunCheckpoint,
    TurnProgress,
    TurnRecord,
    load_checkpoint,
    save_checkpoint,
)
from flows.continuation import interruption
from flows.executors import Executor, ExecutorError, KeyRejected, TurnResult, executor_for
from flows.job import AgentJob
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
)
from keystore.candidates import LOCAL_REFUSAL

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


class _Attempt:
    """One attempt's view of its run: the checkpoint it started from and its turn's progress;
    every change is saved to the keystore at once."""

    def __init__(self, store: Keystore, *, run_id: str, turn: int, agent: str) -> None:
        self.store, self.run_id, self.turn, self.agent = store, run_id, turn, agent
        self.checkpoint = RunCheckpoint()
        self.progress = TurnProgress(turn=turn)

    async def load(self) -> None:
        self.checkpoint = await in_thread(load_checkpoint, self.store, self.run_id)
        self.progress = self.checkpoint.progress_of(self.turn)

    async def _save(self, checkpoint: RunCheckpoint) -> None:
        await in_thread(save_checkpoint, self.store, self.run_id, checkpoint)
        self.checkpoint = checkpoint

    async def keep_partial(self, state: dict[str, Any]) -> None:
        """The executor got part of the turn done before it stopped: keep it before anything
        else happens (the lease is still held, the process may die next)."""
        self.progress = self.progress.with_partial(self.agent, state)
        await self._save(self.checkpoint.model_copy(update={"progress": self.progress}))

    async def served(self, record: TurnRecord, state: dict[str, Any]) -> None:
        await self._save(self.checkpoint.with_turn(record, state))

    async def went(self, outcome: Outcome, event: Event) -> None:
        refused = outcome.from_key if isinstance(outcome, Rotate) else self.progress.refused_key
        why = None if isinstance(event, NoKeyAvailable) else interruption(event)
        self.progress = self.progress.after(
            self.progress.tally.after(outcome), refused_key=refused, interruption=why
        )
        await self._save(self.checkpoint.model_copy(update={"progress": self.progress}))


def _executor_options(
    agent: str, *, job: AgentJob | None, workdir: str | None, config: RotationConfig
) -> dict[str, Any]:
    if agent != "claude-code":
        return {}
    options: dict[str, Any] = {"job": job or AgentJob(), "sandbox": config.sandbox}
    if workdir is not None:
        options["workdir"] = Path(workdir)
    return options


async def _call(
    executor: Executor,
    lease: Lease,
    *,
    prompt: str,
    model: str | None,
    checkpoint: dict[str, Any] | None,
    recorder: ResponseRecorder,
    attempt: _Attempt,
) -> TurnResult | RateLimitSignal | ExecutorError:
    async def gate() -> RateLimitSignal | None:
        return await in_thread(attempt.store.standing_refusal, lease)

    try:
        outcome = await executor.run_turn(
            lease,
            prompt=prompt,
            model=model,
            checkpoint=checkpoint,
            report=recorder,
            keep_partial=attempt.keep_partial,
            gate=gate,
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
    told of, a key the provider rejected, and a request the keystore refused itself (counted
    apart from the provider's 429s: it cost no call)."""
    if isinstance(event, RateLimitSignal) and event.source.startswith(LOCAL_REFUSAL):
        until = event.resets_at.isoformat(timespec="seconds") if event.resets_at else None
        await in_thread(
            store.record,
            "key_refused_locally",
            key_id=lease.key_id,
            run_id=run_id,
            why=event.source,
            until=until,
        )
        return None
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
    job: AgentJob | None = None,
    workdir: str | None = None,
) -> State[Outcome]:
    """One attempt at turn `turn` of run `run_id` on a leased `agent` key (`job` and `workdir`:
    what a claude-code agent works with)."""
    store = flow_keystore()
    config = await in_thread(store.config)
    attempt = _Attempt(store, run_id=run_id, turn=turn, agent=agent)
    await attempt.load()
    checkpoint, progress = attempt.checkpoint, attempt.progress
    state, send = checkpoint.executor_input(agent, prompt)
    holder = f"flow-run {run_id} turn {turn}"
    # Built before the lease: the first one imports its SDK, which takes a while.
    options = _executor_options(agent, job=job, workdir=workdir, config=config)
    executor = executor_for(agent, **options)
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
                executor,
                lease,
                prompt=send,
                model=model,
                checkpoint=state,
                recorder=recorder,
                attempt=attempt,
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
                await attempt.served(record, event.checkpoint)
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
        await attempt.went(outcome, event)
    name = STATE_NAMES[type(outcome)]
    return Completed(data=outcome, name=name, message=_why(outcome, attempt))


def _why(outcome: Outcome, attempt: _Attempt) -> str | None:
    if isinstance(outcome, Served):
        done = attempt.checkpoint.turns[-1]
        return f"served on key {done.key_id} ({done.key_name})"
    return outcome.why[:2000]
