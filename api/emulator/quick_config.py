"""A config from a few command-line flags, so a newcomer can watch a limit without writing JSON.

    keyrelay emulate --requests 5 --window-s 60 --agent-steps 3

`--requests` / `--input-tokens` make one limit rule for every key (it replaces the catch-all
rules of a `--config` file; rules for given keys or prefixes stay, and win for their keys);
`--agent-steps N` plays N Bash steps that append `step<i>` to a file in the client's working
directory, `--agent-script FILE.json` plays an `AgentScript`. Both `keyrelay emulate` and
`python -m api.emulator` take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from api.emulator.agent_script import AgentScript
from api.emulator.config import EmulatorConfig, LimitRule

__all__ = ["DEFAULT_WINDOW_S", "QuickOptionError", "QuickOptions", "config_summary"]

DEFAULT_WINDOW_S = 60.0


class QuickOptionError(ValueError):
    """A flag value the emulator cannot use; the message names the flag."""


def _at_least_one(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise QuickOptionError(f"{flag} must be at least 1, got {value}")


@dataclass(frozen=True)
class QuickOptions:
    requests: int | None = None
    input_tokens: int | None = None
    window_s: float | None = None
    agent_steps: int | None = None
    agent_script: Path | None = None

    def _limit(self) -> LimitRule | None:
        _at_least_one("--requests", self.requests)
        _at_least_one("--input-tokens", self.input_tokens)
        if self.requests is None and self.input_tokens is None:
            if self.window_s is not None:
                raise QuickOptionError("--window-s needs --requests or --input-tokens")
            return None
        window_s = DEFAULT_WINDOW_S if self.window_s is None else self.window_s
        if window_s <= 0:
            raise QuickOptionError(f"--window-s must be more than 0, got {window_s:g}")
        return LimitRule(requests=self.requests, input_tokens=self.input_tokens, window_s=window_s)

    def _agent(self) -> AgentScript | None:
        if self.agent_steps is not None and self.agent_script is not None:
            raise QuickOptionError("give --agent-steps or --agent-script, not both")
        _at_least_one("--agent-steps", self.agent_steps)
        if self.agent_steps is not None:
            return AgentScript.appending_steps(self.agent_steps)
        if self.agent_script is not None:
            # A pydantic ValidationError names the field and the rule.
            return AgentScript.model_validate_json(self.agent_script.read_text())
        return None

    def apply(self, config: EmulatorConfig) -> EmulatorConfig:
        """`config` with these flags in force (flags win over the file)."""
        limit, agent = self._limit(), self._agent()
        updated = config.model_copy(deep=True)
        if limit is not None:
            specific = [r for r in updated.limits if r.specificity != (0, 0)]
            updated.limits = [*specific, limit]
        if agent is not None:
            updated.agent = agent
        return updated


def config_summary(config: EmulatorConfig) -> str:
    """One line on what a caller will meet: the catch-all limit and the agent script."""
    parts = []
    for rule in config.limits:
        caps = [f"{rule.requests} requests"] if rule.requests else []
        caps += [f"{rule.input_tokens} input tokens"] if rule.input_tokens else []
        caps += [f"{rule.tokens} tokens"] if rule.tokens else []
        caps += [f"{rule.output_tokens} output tokens"] if rule.output_tokens else []
        scope = "every key" if rule.specificity == (0, 0) else "matching keys"
        parts.append(f"{', '.join(caps) or 'no cap'} per {rule.window_s:g} s for {scope}")
    if not parts:
        parts.append("no limits")
    if config.agent is not None:
        tools = sorted({step.tool for step in config.agent.steps})
        parts.append(f"agent script: {len(config.agent.steps)} steps ({', '.join(tools) or '-'})")
    return "; ".join(parts)
