"""The conversations every system holds, identical for all of them.

Job j is one conversation of `turns` calls: turn 1 sends `job_prompt(j)`, later turns
"Continue." (what keyrelay's `agent-run` flow sends), each with the whole conversation so far, as
plain-string messages. The emulator's replies are deterministic, so the input tokens of every
call are known before the run (`input_costs`): the oracle schedules with them, keyrelay's pool
gets them as its estimate, and the lower bounds are computed from them.
"""

from __future__ import annotations

from typing import Any

from api.emulator.replies import estimate_tokens, make_reply, plain_text_prompt

__all__ = [
    "CONTINUE",
    "MAX_TOKENS",
    "MODEL",
    "Dialogue",
    "Message",
    "input_costs",
    "input_tokens",
    "job_prompt",
    "turn_prompt",
]

Message = dict[str, Any]
MODEL = "claude-sonnet-5-5"  # the `anthropic` agent's default model
MAX_TOKENS = 4096  # what the `anthropic` agent asks for
CONTINUE = "Continue."


def job_prompt(job: int) -> str:
    return f"job {job:02d}: summarise the release notes, one section per turn"


def turn_prompt(job: int, turn: int) -> str:
    """Turn 1 (1-based) sends the job's prompt, later turns "Continue."."""
    return job_prompt(job) if turn == 1 else CONTINUE


def input_tokens(messages: list[Message]) -> int:
    """What the emulator charges for these messages (no system prompt, no tools)."""
    return estimate_tokens(plain_text_prompt({"system": None, "messages": messages, "tools": None}))


def input_costs(job: int, turns: int) -> list[int]:
    """Input tokens of each call of job `job`, in turn order."""
    history: list[Message] = []
    costs = []
    for turn in range(1, turns + 1):
        messages = [*history, {"role": "user", "content": turn_prompt(job, turn)}]
        costs.append(input_tokens(messages))
        reply = make_reply(messages, max_tokens=MAX_TOKENS).text
        history = [*messages, {"role": "assistant", "content": reply}]
    return costs


class Dialogue:
    """One job's conversation as it goes: the messages of the next call, then its reply."""

    def __init__(self, job: int, turns: int) -> None:
        self.job = job
        self.turns = turns
        self.turn = 1
        self.history: list[Message] = []

    @property
    def done(self) -> bool:
        return self.turn > self.turns

    def messages(self) -> list[Message]:
        return [*self.history, {"role": "user", "content": turn_prompt(self.job, self.turn)}]

    def answered(self, reply_text: str) -> None:
        self.history = [*self.messages(), {"role": "assistant", "content": reply_text}]
        self.turn += 1
