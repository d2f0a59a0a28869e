"""The `agent-run` flow: one conversation of `steps` turns, each on a leased key.

A rate limit rotates the turn to the next key at once (flows/steps.py). When every key of the
provider is spent, RotationConfig decides (flows/policy.py): wait in-process, fall back to another
provider, defer the run to the earliest reset (flows/deferral.py: the worker is freed and the run
waits as Scheduled/AwaitingRateLimit in the UI), or fail with the keys and their resets. A deferred
run resumes from its checkpoint (flows/checkpoint.py) on whichever worker picks it up."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import anyio
from prefect import flow, get_run_logger
from prefect.context import FlowRunContext

from flows.checkpoint import RunCheckpoint, load_checkpoint, save_checkpoint
from flows.deferral import defer_flow_run
from flows.errors import PoolExhausted, RunFailed
from flows.observability import publish_pool_artifact
from flows.policy import Defer, Fail, WaitInline, decide
from flows.runtime import flow_keystore, in_thread
from flows.steps import agent_turn
from keystore import InvalidInput, Keystore, RotationConfig, utcnow

__all__ = ["CONTINUE_PROMPT", "RESUME_MARGIN_S", "agent_run", "turn_prompt"]

Agent = Literal["claude-code", "anthropic", "openai"]
CONTINUE_PROMPT = "Continue."
RESUME_MARGIN_S = 0.25  # a run may start a little before its scheduled time; it then waits inline
MAX_STEPS = 1000


def turn_prompt(turn: int, prompt: str, followups: list[str] | None) -> str:
    """Turn 1 sends `prompt`; turn i > 1 sends followups[i-2] when given, else "Continue."."""
    if turn == 1:
        return prompt
    if followups and turn - 2 < len(followups):
        return followups[turn - 2]
    return CONTINUE_PROMPT


def _validate(prompt: str, steps: int, followups: list[str] | None) -> None:
    if not prompt.strip():
        raise InvalidInput("prompt: must not be empty")
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidInput(f"steps: must be between 1 and {MAX_STEPS}")
    if followups and len(followups) > steps - 1:
        raise InvalidInput(
            f"followups: {len(followups)} given but steps={steps} has only "
            f"{steps - 1} turns after the first"
        )


class _Run:
    """The state one execution of a flow run works with."""

    def __init__(
        self, store: Keystore, run_id: str, agent: str, model: str | None, deployed: bool
    ) -> None:
        self.store, self.run_id, self.agent, self.model = store, run_id, agent, model
        self.deployed = deployed
        self.logger = get_run_logger()

    async def provider_for_turn(self, checkpoint: RunCheckpoint, config: RotationConfig) -> str:
        """The primary agent, unless the run is on fallback and the primary is still spent."""
        if not checkpoint.on_fallback:
            return self.agent
        explained = await in_thread(self.store.explain, self.agent)
        if explained.chosen is None:
            return config.fallback_provider
        await in_thread(
            self.store.record,
            "fallback_ended",
            run_id=self.run_id,
            provider=self.agent,
            fallback_provider=config.fallback_provider,
        )
        self.logger.info("%s has a key again: leaving the fallback", self.agent)
        return self.agent

    async def try_fallback(
        self, checkpoint: RunCheckpoint, config: RotationConfig, exhausted: PoolExhausted
    ) -> bool:
        if not config.fallback_enabled or exhausted.provider != self.agent:
            return False
        fallback = config.fallback_provider
        if fallback == self.agent or (await in_thread(self.store.explain, fallback)).chosen is None:
            return False
        await in_thread(
            self.store.record,
            "fallback_started",
            run_id=self.run_id,
            provider=self.agent,
            fallback_provider=fallback,
            reason=exhausted.reason,
        )
        self.logger.warning("every %s key is spent: continuing on %s", self.agent, fallback)
        return True

    async def defer(self, exhausted: PoolExhausted, until_reset: Any) -> None:
        resume_at = await in_thread(
            self.store.register_wait,
            run_id=self.run_id,
            provider=exhausted.provider,
            reset_at=until_reset + timedelta(seconds=RESUME_MARGIN_S),
        )
        keys = "; ".join(exhausted.detail)
        message = (
            f"Every {exhausted.provider} key is spent ({exhausted.reason}); "
            f"resuming at {resume_at.isoformat(timespec='seconds')}. {keys}"
        )
        await in_thread(
            self.store.record,
            "pool_waiting",
            run_id=self.run_id,
            provider=exhausted.provider,
            until=resume_at,
            reason=exhausted.reason,
        )
        await publish_pool_artifact(
            self.store,
            exhausted.provider,
            why=f"run deferred until {resume_at.isoformat(timespec='seconds')}",
        )
        self.logger.info("%s", message)
        context = FlowRunContext.get()
        assert context is not None and context.flow_run is not None
        await defer_flow_run(context.flow_run.id, until=resume_at, message=message[:2000])

    async def fail(self, message: str, exhausted: PoolExhausted) -> None:
        await in_thread(
            self.store.record,
            "pool_exhausted",
            run_id=self.run_id,
            provider=exhausted.provider,
            reason=exhausted.reason,
            message=message,
        )
        raise RunFailed(message)

    async def turn(self, number: int, prompt: str, checkpoint: RunCheckpoint) -> RunCheckpoint:
        while True:
            config = await in_thread(self.store.config)
            provider = await self.provider_for_turn(checkpoint, config)
            state, send = checkpoint.executor_input(provider, prompt)
            try:
                record, new_state = await agent_turn(
                    agent=provider,
                    prompt=send,
                    turn=number,
                    run_id=self.run_id,
                    model=self.model if provider == self.agent else None,
                    checkpoint=state,
                )
            except PoolExhausted as exhausted:
                if await self.try_fallback(checkpoint, config, exhausted):
                    checkpoint = checkpoint.model_copy(update={"on_fallback": True})
                    await in_thread(save_checkpoint, self.store, self.run_id, checkpoint)
                    continue
                await self.on_exhausted(exhausted, config)
                continue
            record = record.model_copy(update={"prompt": prompt})
            on_fallback = provider != self.agent
            checkpoint = checkpoint.with_turn(record, new_state).model_copy(
                update={"on_fallback": on_fallback}
            )
            await in_thread(save_checkpoint, self.store, self.run_id, checkpoint)
            self.logger.info(
                "turn %d done on %s key %d (%s)", number, provider, record.key_id, record.key_name
            )
            return checkpoint

    async def on_exhausted(self, exhausted: PoolExhausted, config: RotationConfig) -> None:
        now = utcnow()
        decision = decide(exhausted, config, now=now)
        if isinstance(decision, Defer) and not self.deployed:
            # Nothing would pick a deferred run up again: wait here instead.
            decision = WaitInline(decision.until)
        if isinstance(decision, WaitInline):
            wait_s = max(0.0, (decision.until - now).total_seconds())
            self.logger.info(
                "no %s key free (%s): waiting %.1f s in-process",
                exhausted.provider,
                exhausted.reason,
                wait_s,
            )
            await anyio.sleep(wait_s)
        elif isinstance(decision, Defer):
            await self.defer(exhausted, decision.until)
        elif isinstance(decision, Fail):
            await self.fail(decision.message, exhausted)


@flow(name="agent-run", log_prints=False)
async def agent_run(
    prompt: str,
    agent: Agent = "claude-code",
    model: str | None = None,
    steps: int = 1,
    followups: list[str] | None = None,
    run_label: str | None = None,
) -> dict[str, Any]:
    """Run an LLM agent conversation of `steps` turns, rotating keys on rate limits and waiting
    (as Scheduled/AwaitingRateLimit, worker freed) when every key is spent."""
    _validate(prompt, steps, followups)
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    flow_run = context.flow_run
    run_id = str(flow_run.id)
    store = flow_keystore()
    run = _Run(store, run_id, agent, model, deployed=flow_run.deployment_id is not None)
    checkpoint = await in_thread(load_checkpoint, store, run_id)
    due = await in_thread(store.clear_wait, run_id)
    if due is not None:
        lateness_s = (utcnow() - due).total_seconds()
        await in_thread(
            store.record,
            "pool_resumed",
            run_id=run_id,
            provider=agent,
            lateness_s=round(lateness_s, 3),
            run_count=flow_run.run_count,
            turns_done=checkpoint.turns_done,
        )
        run.logger.info(
            "resumed %.2f s after the reset, %d of %d turns already done",
            lateness_s,
            checkpoint.turns_done,
            steps,
        )
    for number in range(checkpoint.turns_done + 1, steps + 1):
        checkpoint = await run.turn(number, turn_prompt(number, prompt, followups), checkpoint)
    return {
        "run_label": run_label,
        "agent": agent,
        "turns": [
            {"turn": t.turn, "agent": t.agent, "key_id": t.key_id, "reply": t.text}
            for t in checkpoint.turns
        ],
    }
