"""The demo's knobs (a module of its own so the CLI can show the defaults without importing
the emulator, the keystore or Prefect)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["AGENTS", "DEMO_KEYS", "DemoAgent", "DemoOptions"]

DemoAgent = Literal["anthropic", "openai", "claude-code"]
AGENTS: tuple[DemoAgent, ...] = ("anthropic", "openai", "claude-code")
JOB_FILE = "progress.txt"  # what the claude-code job's tool steps append to
DEMO_KEYS = (("alpha", 1), ("beta", 2), ("gamma", 3))  # name, priority (lower is preferred)


@dataclass(frozen=True)
class DemoOptions:
    runs: int = 4
    steps: int = 3
    window_s: float = 10.0  # each key's fixed rate-limit window
    requests: int = 2  # requests each key may make per window
    limit: int = 3  # flow runs the serve process runs at once
    # Leases per key: 2 lets runs share the preferred key and rotate down the priorities as
    # keys run out (with 1, concurrent runs spread over the keys and rarely rotate).
    key_concurrency: int = 2
    agent: DemoAgent = "anthropic"
    reply_delay_s: float = 0.2  # every emulator answer takes this long: turns overlap visibly
    inline_wait_max_s: float = 1.0  # resets further away than this defer the run
    timeout_s: float = 300.0  # the runs must all finish within this
    job_steps: int = 8  # claude-code: tool calls in the job's one turn

    @classmethod
    def for_agent(cls, agent: DemoAgent, **given: object) -> DemoOptions:
        """The defaults of `agent`'s demo, with what the caller gave (None: the default). The
        claude-code demo is one job of many tool calls in one turn: the real CLI, through a
        rotation in the middle of the turn and a deferral."""
        defaults: dict[str, object] = {}
        if agent == "claude-code":
            defaults = {"runs": 1, "steps": 1, "limit": 1, "window_s": 15.0, "reply_delay_s": 0.0}
        chosen = {k: v for k, v in given.items() if v is not None}
        return cls(agent=agent, **{**defaults, **chosen})  # type: ignore[arg-type]

    @property
    def capacity_per_window(self) -> int:
        return len(DEMO_KEYS) * self.requests

    @property
    def turns(self) -> int:
        return self.runs * self.steps
