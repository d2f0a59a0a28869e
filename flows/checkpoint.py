"""What a resumed run needs, kept in the keystore database (so any worker can resume it).

A run's conversation is a list of turns (provider-neutral: prompt and reply) plus, per agent,
the executor's own state (an SDK message list, or the `claude` CLI session transcript) and how
many turns that state includes. When a run switches provider (fallback) the agent that comes
back is caught up from the neutral history.

The turn being worked on has its own record (`TurnProgress`): how many rotations and failures
it has used up, and the key the last attempt was refused on, so a deferred or crashed run goes
on with the same budgets. `last_keys` is the key each agent last served on (affinity);
`crash_resumptions`, how often the run came back after its process died (flows/recovery.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from flows.continuation import continuation_prompt
from flows.outcome import Tally
from keystore import Keystore

__all__ = ["RunCheckpoint", "TurnProgress", "TurnRecord", "load_checkpoint", "save_checkpoint"]

HTTP_AGENTS = ("anthropic", "openai")


class TurnRecord(BaseModel):
    turn: int
    agent: str
    key_id: int
    key_name: str
    prompt: str
    text: str
    usage: dict[str, int] = Field(default_factory=dict)


class TurnProgress(BaseModel):
    """The unfinished turn: what its attempts used up, and the key the last one was refused on."""

    turn: int
    rotations: int = 0
    transient: int = 0
    agent_crash: int = 0
    refused_key: int | None = None
    # An attempt that got part of the turn done: the agent's state as far as it got (resumed by
    # the next attempt on that agent), and why it stopped (told to the agent).
    partial: dict[str, Any] | None = None
    partial_agent: str | None = None
    interruption: str | None = None

    @property
    def tally(self) -> Tally:
        return Tally(self.rotations, self.transient, self.agent_crash)

    def after(
        self, tally: Tally, *, refused_key: int | None, interruption: str | None
    ) -> TurnProgress:
        return self.model_copy(
            update={
                "rotations": tally.rotations,
                "transient": tally.transient,
                "agent_crash": tally.agent_crash,
                "refused_key": refused_key,
                "interruption": (interruption or self.interruption) if self.partial else None,
            }
        )

    def with_partial(self, agent: str, state: dict[str, Any]) -> TurnProgress:
        return self.model_copy(update={"partial": state, "partial_agent": agent})


class RunCheckpoint(BaseModel):
    turns: list[TurnRecord] = Field(default_factory=list)
    states: dict[str, dict[str, Any]] = Field(default_factory=dict)
    synced: dict[str, int] = Field(default_factory=dict)  # agent -> turns its state includes
    on_fallback: bool = False
    progress: TurnProgress | None = None
    last_keys: dict[str, int] = Field(default_factory=dict)  # agent -> key it last served on
    # Executions that came back after the run's process died (flows/recovery.py): bounded.
    crash_resumptions: int = 0

    @property
    def turns_done(self) -> int:
        return len(self.turns)

    def input_tokens(self, agent: str, prompt: str) -> int:
        """The next request's estimated size: what the conversation cost last time on this
        agent (it is resent whole), plus the new prompt at ~4 characters a token."""
        previous = [
            t.usage.get("input_tokens", 0) + t.usage.get("output_tokens", 0)
            for t in self.turns
            if t.agent == agent
        ]
        return (previous[-1] if previous else 0) + len(prompt) // 4 + 1

    def progress_of(self, turn: int) -> TurnProgress:
        if self.progress is not None and self.progress.turn == turn:
            return self.progress
        return TurnProgress(turn=turn)

    def executor_input(self, agent: str, prompt: str) -> tuple[dict[str, Any] | None, str]:
        """The checkpoint to hand `agent`'s executor, and the prompt to send: the turn as far as
        an interrupted attempt on this agent got, with a prompt that resumes it; or the turns it
        missed while another provider served the run, when it cannot be given them otherwise."""
        progress = self.progress
        if (
            progress is not None
            and progress.partial is not None
            and progress.partial_agent == agent
        ):
            cut_off = len(progress.partial.get("interrupted_tools") or [])
            return progress.partial, continuation_prompt(prompt, progress.interruption, cut_off)
        seen = self.synced.get(agent, 0)
        if seen == self.turns_done:
            return self.states.get(agent), prompt
        if agent in HTTP_AGENTS:
            messages: list[dict[str, str]] = []
            for turn in self.turns:
                messages += [
                    {"role": "user", "content": turn.prompt},
                    {"role": "assistant", "content": turn.text},
                ]
            return {"messages": messages}, prompt
        missed = "\n\n".join(f"User: {t.prompt}\nAssistant: {t.text}" for t in self.turns[seen:])
        preface = (
            "These turns of our conversation happened while you were unavailable:\n\n"
            f"{missed}\n\nContinue from there.\n\n"
        )
        return self.states.get(agent), preface + prompt

    def with_turn(self, record: TurnRecord, state: dict[str, Any]) -> RunCheckpoint:
        turns = [*self.turns, record]
        return self.model_copy(
            update={
                "turns": turns,
                "states": {**self.states, record.agent: state},
                "synced": {**self.synced, record.agent: len(turns)},
                "progress": None,
                "last_keys": {**self.last_keys, record.agent: record.key_id},
            }
        )


def load_checkpoint(store: Keystore, run_id: str) -> RunCheckpoint:
    data = store.load_checkpoint(run_id)
    return RunCheckpoint.model_validate(data) if data else RunCheckpoint()


def save_checkpoint(store: Keystore, run_id: str, checkpoint: RunCheckpoint) -> None:
    store.save_checkpoint(run_id, checkpoint.model_dump(mode="json"))
