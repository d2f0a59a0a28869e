"""The one place that applies outcomes: a turn is attempted until an attempt is served.

Served      the turn is done (the attempt saved it in the checkpoint before releasing)
Rotate      attempt again at once; the next lease goes to another key (`key_rotated`)
Backoff     sleep the jittered delay (no lease is held), then attempt again
WaitInline  sleep until the pool should have a key (no lease is held), then attempt again
Defer       give the worker back until then (flows/deferral.py); never returns
Fallback    continue on the fallback provider (`fallback_started`)
Fail        raise RunFailed with the reason (`pool_exhausted` when the pool ran dry)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import assert_never

import anyio
from prefect import get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext

from flows.blocking import in_thread
from flows.checkpoint import RunCheckpoint, load_checkpoint, save_checkpoint
from flows.deferral import defer_flow_run
from flows.errors import RunFailed
from flows.job import AgentJob
from flows.observability import publish_pool_artifact
from flows.outcome import Backoff, Defer, Fail, Fallback, Outcome, Rotate, Served, WaitInline
from flows.steps import agent_turn
from flows.workdir import snapshot_for_deferral
from keystore import Keystore

__all__ = ["RESUME_MARGIN_S", "RunLoop"]

RESUME_MARGIN_S = 0.25  # a run may start a little before its scheduled time; it then waits inline


class RunLoop:
    """One execution of a flow run: its keystore, identity and primary agent."""

    def __init__(
        self,
        store: Keystore,
        *,
        run_id: str,
        agent: str,
        model: str | None,
        deployed: bool,
        job: AgentJob | None = None,
        workdir: str | None = None,
    ) -> None:
        self.store, self.run_id, self.agent, self.model = store, run_id, agent, model
        self.deployed = deployed
        self.job, self.workdir = job or AgentJob(), workdir
        self.logger = get_run_logger()

    async def checkpoint(self) -> RunCheckpoint:
        return await in_thread(load_checkpoint, self.store, self.run_id)

    async def play(self, number: int, prompt: str) -> RunCheckpoint:
        """Attempt turn `number` until it is served; returns the checkpoint that holds it."""
        while True:
            provider = await self._provider_for_turn()
            # Prefect 3.9 types `return_state=True` on an async task as not awaitable; it is.
            attempt: State[Outcome] = await agent_turn(  # type: ignore[misc]
                agent=provider,
                prompt=prompt,
                turn=number,
                run_id=self.run_id,
                model=self.model if provider == self.agent else None,
                can_defer=self.deployed,
                job=self.job if provider == "claude-code" else None,
                workdir=self.workdir if provider == "claude-code" else None,
                return_state=True,
            )
            outcome = await attempt.aresult()  # raises what a broken attempt raised
            if isinstance(outcome, Served):
                checkpoint = await self.checkpoint()
                done = checkpoint.turns[-1]
                self.logger.info(
                    "turn %d done on %s key %d (%s)", number, provider, done.key_id, done.key_name
                )
                return checkpoint
            await self.apply(outcome, provider)

    async def apply(self, outcome: Outcome, provider: str) -> None:
        """Carry out an outcome other than Served for an attempt on `provider`: returns when the
        run should try again; a Defer never returns, a Fail raises RunFailed."""
        if isinstance(outcome, Served):
            raise ValueError("a served attempt has nothing left to apply")
        if isinstance(outcome, Rotate):
            self.logger.info("%s: rotating to the next key", outcome.why)
            await publish_pool_artifact(self.store, provider, why=outcome.why)
        elif isinstance(outcome, Backoff):
            self.logger.warning("%s: backing off %.1f s", outcome.why, outcome.delay_s)
            await anyio.sleep(outcome.delay_s)
        elif isinstance(outcome, WaitInline):
            await self._wait_until(outcome.until, outcome.why)
        elif isinstance(outcome, Defer):
            await self._defer(outcome)
        elif isinstance(outcome, Fallback):
            await self._fall_back(provider, outcome)
        elif isinstance(outcome, Fail):
            await self._fail(provider, outcome)
        else:
            assert_never(outcome)

    async def _provider_for_turn(self) -> str:
        """The primary agent, unless the run is on fallback and the primary is still spent."""
        checkpoint = await self.checkpoint()
        if not checkpoint.on_fallback:
            return self.agent
        config = await in_thread(self.store.config)
        if (await in_thread(self.store.explain, self.agent)).chosen is None:
            return config.fallback_provider
        await in_thread(
            self.store.record,
            "fallback_ended",
            run_id=self.run_id,
            provider=self.agent,
            fallback_provider=config.fallback_provider,
        )
        await self._save(checkpoint.model_copy(update={"on_fallback": False}))
        self.logger.info("%s has a key again: leaving the fallback", self.agent)
        return self.agent

    async def _fall_back(self, provider: str, outcome: Fallback) -> None:
        await in_thread(
            self.store.record,
            "fallback_started",
            run_id=self.run_id,
            provider=provider,
            fallback_provider=outcome.provider,
            reason=outcome.why,
        )
        self.logger.warning("%s: continuing on %s", outcome.why, outcome.provider)
        checkpoint = await self.checkpoint()
        await self._save(checkpoint.model_copy(update={"on_fallback": True}))

    async def _wait_until(self, until: datetime, why: str) -> None:
        wait_s = max(0.0, (until - self.store.now()).total_seconds())
        if wait_s >= 1:
            self.logger.info("%s: waiting %.1f s in-process", why, wait_s)
        await anyio.sleep(wait_s)

    async def _defer(self, outcome: Defer) -> None:
        # Whoever picks the run up may not have its working directory: keep it (or fail here,
        # rather than resume later in an empty one).
        await in_thread(snapshot_for_deferral, self.store, self.run_id, self.job)
        resume_at = outcome.until
        if outcome.budget is None:  # the pool is spent: queue behind the runs waiting already
            resume_at = await in_thread(
                self.store.register_wait,
                run_id=self.run_id,
                provider=outcome.provider,
                reset_at=outcome.until + timedelta(seconds=RESUME_MARGIN_S),
            )
            await publish_pool_artifact(
                self.store,
                outcome.provider,
                why=f"run deferred until {resume_at.isoformat(timespec='seconds')}",
            )
        message = f"{outcome.why[0].upper()}{outcome.why[1:]}; resuming at " + resume_at.isoformat(
            timespec="seconds"
        )
        await in_thread(
            self.store.record,
            "pool_waiting",
            run_id=self.run_id,
            provider=outcome.provider,
            until=resume_at,
            reason=outcome.why[:500],
        )
        self.logger.info("%s", message)
        context = FlowRunContext.get()
        assert context is not None and context.flow_run is not None
        await defer_flow_run(context.flow_run.id, until=resume_at, message=message[:2000])

    async def _fail(self, provider: str, outcome: Fail) -> None:
        if outcome.exhausted:
            await in_thread(
                self.store.record,
                "pool_exhausted",
                run_id=self.run_id,
                provider=provider,
                message=outcome.why,
            )
        raise RunFailed(outcome.why)

    async def _save(self, checkpoint: RunCheckpoint) -> None:
        await in_thread(save_checkpoint, self.store, self.run_id, checkpoint)
