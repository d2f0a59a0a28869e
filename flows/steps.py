"""The keyed step: one turn of an agent conversation on a leased key, as a Prefect task.

    lease -> execute (SDK / CLI retries off) -> classify -> release

A rate limit marks the key (and its group) as cooling and raises `RateLimited`; the task's
`retry_condition_fn` retries at once (delay 0) and the next attempt leases the next key
(`key_rotated`). Usable in your own flows too:

    record, state = await agent_turn(agent="anthropic", prompt="...", turn=1, run_id="my-run")
"""

from __future__ import annotations

from typing import Any

import anyio
from prefect import task
from prefect.context import TaskRunContext

from flows.checkpoint import TurnRecord
from flows.errors import (
    KeyRevoked,
    Overloaded,
    PoolExhausted,
    RateLimited,
    StepFailed,
    retry_on_rotate,
)
from flows.executors import KeyRejected, TurnResult, executor_for
from flows.leasing import leased_key
from flows.observability import publish_pool_artifact
from flows.policy import BUSY_POLL_S
from flows.runtime import flow_keystore, in_thread
from keystore import Keystore, Lease, NoKeyAvailable, RateLimitSignal, Settings

__all__ = ["MAX_ATTEMPTS_PER_TURN", "agent_turn", "turn_cache_key"]

MAX_ATTEMPTS_PER_TURN = 25  # each attempt after the first needs a new rate limit to happen
OVERLOAD_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
_previous_key: dict[str, int] = {}  # task run id -> key the last attempt was refused on


def turn_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """A finished turn of a run is never executed twice: a resumed run (same flow-run id) gets it
    back from Prefect's persisted result."""
    return f"keyrelay-{context.task_run.flow_run_id}-turn-{parameters['turn']}"


def _executor_options(agent: str, run_id: str) -> dict[str, Any]:
    if agent == "claude-code":
        # A stable working directory per run on this machine: an agent's files survive turns.
        workdir = Settings().home / "runs" / run_id
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return {"workdir": workdir}
    return {}


async def _classify(
    store: Keystore, lease: Lease, signal: RateLimitSignal, *, run_id: str, attempt: int
) -> None:
    """Mark the key and raise what the flow should do about it."""
    who = f"key {lease.key_id} ({lease.key_name})"
    if signal.kind == "request_too_large":
        raise StepFailed(
            f"{who}: the request is larger than the provider's limit ({signal.source}); "
            "no key can serve it"
        )
    if signal.kind == "overloaded":
        await anyio.sleep(OVERLOAD_BACKOFF_S[min(attempt - 1, len(OVERLOAD_BACKOFF_S) - 1)])
        raise Overloaded(f"{who}: provider overloaded ({signal.source}); backing off", lease.key_id)
    marked = await in_thread(store.mark_limited, lease.key_id, signal, run_id=run_id)
    if signal.kind == "quota_exhausted" and not signal.retryable and marked.scope == "unusable":
        raise StepFailed(
            f"{who}: quota exhausted ({signal.source}), not retryable: a person must "
            f"act, then run `keyrelay keys reset {lease.key_id}`"
        )
    until = (
        marked.cooling_until.isoformat(timespec="seconds") if marked.cooling_until else "unknown"
    )
    await publish_pool_artifact(store, lease.provider, why=f"{who} rate-limited until {until}")
    raise RateLimited(f"{who}: {signal.kind} until {until} ({signal.source})", lease.key_id)


@task(
    name="agent-turn",
    retries=MAX_ATTEMPTS_PER_TURN - 1,
    retry_delay_seconds=0,
    retry_condition_fn=retry_on_rotate,
    cache_key_fn=turn_cache_key,
    persist_result=True,
)
async def agent_turn(
    *,
    agent: str,
    prompt: str,
    turn: int,
    run_id: str,
    model: str | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> tuple[TurnRecord, dict[str, Any]]:
    """Run one turn on a leased `agent` key; returns the turn and the executor's new state."""
    store = flow_keystore()
    context = TaskRunContext.get()
    task_run_id = str(context.task_run.id) if context else f"{run_id}-{turn}"
    attempt = context.task_run.run_count if context else 1
    holder = f"flow-run {run_id} turn {turn}"
    try:
        async with leased_key(agent, holder=holder, store=store, busy_poll_s=BUSY_POLL_S) as lease:
            refused = _previous_key.pop(task_run_id, None)
            if refused is not None and refused != lease.key_id:
                await in_thread(
                    store.record,
                    "key_rotated",
                    key_id=lease.key_id,
                    run_id=run_id,
                    from_key=refused,
                    turn=turn,
                    attempt=attempt,
                )
            executor = executor_for(agent, **_executor_options(agent, run_id))
            try:
                outcome = await executor.run_turn(
                    lease, prompt=prompt, model=model, checkpoint=checkpoint
                )
            except KeyRejected as exc:
                await in_thread(
                    store.mark_unusable,
                    lease.key_id,
                    f"rejected by the provider: {exc.message}",
                    run_id=run_id,
                )
                _previous_key[task_run_id] = lease.key_id
                raise KeyRevoked(
                    f"key {lease.key_id} ({lease.key_name}) was rejected: {exc.message}",
                    lease.key_id,
                ) from None
            if isinstance(outcome, RateLimitSignal):
                _previous_key[task_run_id] = lease.key_id
                await _classify(store, lease, outcome, run_id=run_id, attempt=attempt)
            assert isinstance(outcome, TurnResult)
            if outcome.utilization is not None:
                await in_thread(store.record_utilization, lease.key_id, outcome.utilization)
            record = TurnRecord(
                turn=turn,
                agent=agent,
                key_id=lease.key_id,
                key_name=lease.key_name,
                prompt=prompt,
                text=outcome.text,
                usage=outcome.usage,
            )
    except NoKeyAvailable as exc:
        _previous_key.pop(task_run_id, None)
        raise PoolExhausted.from_error(exc) from None
    _previous_key.pop(task_run_id, None)
    return record, outcome.checkpoint
