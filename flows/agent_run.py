"""The `agent-run` flow: one conversation of `steps` turns, each on a leased key.

Each turn is attempted by the keyed step (flows/steps.py) until it is served; what happens
between attempts (rotate to the next key at once, back off, wait in-process, fall back to another
provider, defer the run to the earliest reset, fail naming the keys) is decided in
flows/outcome.py and applied in flows/turn_loop.py. A deferred run waits as
Scheduled/AwaitingRateLimit in the UI with its worker freed, and resumes from its checkpoint
(flows/checkpoint.py) on whichever worker picks it up."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext

from flows.blocking import in_thread
from flows.checkpoint import load_checkpoint
from flows.job import AgentJob, PermissionMode
from flows.recovery import check_heartbeat, recover_after_crash
from flows.runtime import flow_keystore
from flows.turn_loop import RunLoop
from flows.workdir import prepare_workdir
from keystore import InvalidInput, Provider, utcnow

__all__ = ["CONTINUE_PROMPT", "agent_run", "turn_prompt"]

CONTINUE_PROMPT = "Continue."
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


@flow(name="agent-run", log_prints=False)
async def agent_run(
    prompt: str,
    agent: Provider = "claude-code",
    model: str | None = None,
    steps: int = 1,
    followups: list[str] | None = None,
    run_label: str | None = None,
    workdir: str | None = None,
    allowed_tools: list[str] | None = None,
    disallowed_tools: list[str] | None = None,
    permission_mode: PermissionMode | None = None,
    append_system_prompt: str | None = None,
    max_turns: int | None = None,
    add_dirs: list[str] | None = None,
) -> dict[str, Any]:
    """Run an LLM agent conversation of `steps` turns, rotating keys on rate limits and waiting
    (as Scheduled/AwaitingRateLimit, worker freed) when every key is spent. A run whose process
    died resumes from its checkpoint when keyrelay's automations are applied (flows/recovery.py).

    For `claude-code`, a job in a repository: `workdir` (an existing directory on the worker;
    default: a directory of the run's own), `allowed_tools` / `disallowed_tools` (tool rules such
    as "Bash(git:*)"), `permission_mode`, `append_system_prompt`, `max_turns` (the CLI's own
    agent turns per run turn) and `add_dirs`. The other agents refuse these."""
    _validate(prompt, steps, followups)
    job = AgentJob.of(
        workdir=workdir,
        allowed_tools=allowed_tools,
        disallowed_tools=disallowed_tools,
        permission_mode=permission_mode,
        append_system_prompt=append_system_prompt,
        max_turns=max_turns,
        add_dirs=add_dirs,
    )
    job.refuse_for(agent)
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    flow_run = context.flow_run
    run_id = str(flow_run.id)
    store = flow_keystore()
    checkpoint = await in_thread(load_checkpoint, store, run_id)
    if flow_run.deployment_id is not None:  # only a deployment's run is picked up again
        logger = get_run_logger()
        check_heartbeat(logger)
        checkpoint = await recover_after_crash(
            store, run_id=run_id, flow_run_id=flow_run.id, checkpoint=checkpoint, logger=logger
        )
    folder = None
    if agent == "claude-code":
        job.check_dirs()  # on this worker, which may not be the one the run started on
        resuming = checkpoint.turns_done > 0 or checkpoint.progress is not None
        folder = await in_thread(prepare_workdir, store, run_id, job, resuming=resuming)
    run = RunLoop(
        store,
        run_id=run_id,
        agent=agent,
        model=model,
        deployed=flow_run.deployment_id is not None,
        job=job,
        workdir=str(folder) if folder is not None else None,
    )
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
        checkpoint = await run.play(number, turn_prompt(number, prompt, followups))
    return {
        "run_label": run_label,
        "agent": agent,
        "turns": [
            {"turn": t.turn, "agent": t.agent, "key_id": t.key_id, "reply": t.text}
            for t in checkpoint.turns
        ],
    }
