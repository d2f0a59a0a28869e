"""An agent script as config data: the tool calls the emulator makes, in order, then a final text.

    AgentScript(steps=[ToolStep.bash("echo step{step} >> log.txt")] * 3, final_text="done")

Strings in a step (its input values and its text) may name `{step}` (1-based index of the step)
and `{steps}` (how many there are); the final text may name `{steps}`. Only these two exact
tokens are replaced, so shell braces (`${HOME}`, `{a,b}`) pass through untouched.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AgentScript", "ToolStep", "render"]

# Inputs the claude CLI (2.1.332) requires of the tools a script is most likely to call; a step
# missing one would only fail later, inside the client, as an InputValidationError.
REQUIRED_INPUT: dict[str, tuple[str, ...]] = {
    "Bash": ("command",),
    "Write": ("file_path", "content"),  # file_path must be absolute
    "Edit": ("file_path", "old_string", "new_string"),
    "Read": ("file_path",),
}


def render(value: Any, *, step: int, steps: int) -> Any:
    """`value` with `{step}` / `{steps}` replaced in every string it holds."""
    if isinstance(value, str):
        return value.replace("{step}", str(step)).replace("{steps}", str(steps))
    if isinstance(value, list):
        return [render(item, step=step, steps=steps) for item in value]
    if isinstance(value, dict):
        return {key: render(item, step=step, steps=steps) for key, item in value.items()}
    return value


class ToolStep(BaseModel):
    """One tool call: the tool's name as the client declares it and the input to give it."""

    model_config = ConfigDict(extra="forbid")

    tool: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)
    text: str | None = Field(default=None, description="a short text block before the call")

    @model_validator(mode="after")
    def _has_required_input(self) -> ToolStep:
        missing = [name for name in REQUIRED_INPUT.get(self.tool, ()) if name not in self.input]
        if missing:
            raise ValueError(f"a {self.tool} step needs input {', '.join(missing)}")
        return self

    @classmethod
    def bash(cls, command: str, *, description: str | None = None) -> ToolStep:
        return cls(
            tool="Bash",
            input={"command": command, "description": description or f"Run: {command}"},
            text=f"Step {{step}} of {{steps}}: {description or command}",
        )

    @classmethod
    def write(cls, file_path: str, content: str) -> ToolStep:
        return cls(
            tool="Write",
            input={"file_path": file_path, "content": content},
            text=f"Step {{step}} of {{steps}}: write {file_path}",
        )


class AgentScript(BaseModel):
    """Tool steps the emulator plays, one per reply, then `final_text` (see `agent.next_move`)."""

    model_config = ConfigDict(extra="forbid")

    steps: list[ToolStep] = Field(default_factory=list)
    final_text: str = "Done: {steps} tool steps."

    @classmethod
    def appending_steps(cls, count: int, *, file_name: str = "agent-steps.txt") -> AgentScript:
        """`count` Bash steps, each appending `step<i>` to `file_name` in the client's cwd."""
        if count < 1:
            raise ValueError("an agent script needs at least one step")
        step = ToolStep.bash(
            f"echo step{{step}} >> {file_name}", description=f"Append step {{step}} to {file_name}"
        )
        return cls(steps=[step] * count)
