"""What a headless `claude-code` job sets besides its prompt: where it works and what it may do.

    AgentJob(workdir="/srv/repo", allowed_tools=["Bash(git:*)", "Edit"], max_turns=50)

The same names are `agent-run` parameters (so the Prefect UI form, `prefect deployment run
--param ...` and `keyrelay run --...` take them) and `claude -p` flags (`to_cli_args`). The other
agents are plain API conversations: a job option given to them is refused, not ignored.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keystore import InvalidInput

__all__ = ["JOB_FIELDS", "AgentJob", "PermissionMode", "workdir_missing"]

PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions"]
_RULE_MAX = 500
_TEXT_MAX = 100_000


class AgentJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    workdir: str | None = Field(
        None, description="an existing directory on the worker: the agent's working directory"
    )
    allowed_tools: list[str] = Field(
        default_factory=list, description='tool rules the agent may use, e.g. "Bash(git:*)"'
    )
    disallowed_tools: list[str] = Field(
        default_factory=list, description="tool rules the agent may not use"
    )
    permission_mode: PermissionMode | None = Field(None, description="the CLI's permission mode")
    append_system_prompt: str | None = Field(
        None, max_length=_TEXT_MAX, description="appended to the agent's system prompt"
    )
    max_turns: int | None = Field(
        None, ge=1, le=10_000, description="the CLI's own agent turns (model calls) per run turn"
    )
    add_dirs: list[str] = Field(
        default_factory=list, description="more directories the agent may work in"
    )

    @field_validator("allowed_tools", "disallowed_tools")
    @classmethod
    def _rules(cls, rules: list[str]) -> list[str]:
        for rule in rules:
            if not rule.strip() or len(rule) > _RULE_MAX or rule.startswith("-"):
                raise ValueError(f"not a tool rule: {rule[:40]!r}")
        return rules

    @classmethod
    def of(cls, **options: object) -> AgentJob:
        """From the flow's parameters (None and empty lists mean "not set"), with a clear error."""
        given = {k: v for k, v in options.items() if v is not None}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "job"
            raise InvalidInput(f"{field}: {first['msg']}") from None

    @property
    def is_set(self) -> bool:
        return self != AgentJob()

    def refuse_for(self, agent: str) -> None:
        """The HTTP agents have no working directory or tools: say so rather than ignore it."""
        if agent != "claude-code" and self.is_set:
            given = ", ".join(sorted(self.model_dump(exclude_defaults=True)))
            raise InvalidInput(f"{given}: only the claude-code agent takes these, not {agent}")

    def check_dirs(self) -> None:
        """Every directory the job names exists here (the worker it runs on)."""
        for field, path in (("workdir", self.workdir), *(("add_dirs", d) for d in self.add_dirs)):
            if path is not None and (problem := workdir_missing(path)) is not None:
                raise InvalidInput(f"{field}: {problem}")

    def to_cli_args(self) -> list[str]:
        args: list[str] = []
        if self.allowed_tools:
            args += ["--allowedTools", *self.allowed_tools]
        if self.disallowed_tools:
            args += ["--disallowedTools", *self.disallowed_tools]
        if self.permission_mode is not None:
            args += ["--permission-mode", self.permission_mode]
        if self.append_system_prompt is not None:
            args += ["--append-system-prompt", self.append_system_prompt]
        if self.max_turns is not None:
            args += ["--max-turns", str(self.max_turns)]
        for folder in self.add_dirs:
            args += ["--add-dir", str(Path(folder).resolve())]
        return args


JOB_FIELDS: tuple[str, ...] = tuple(AgentJob.model_fields)


def workdir_missing(path: str) -> str | None:
    """Why `path` cannot be a working directory on this machine, naming both (None: it can)."""
    folder = Path(path).expanduser()
    where = f"on {platform.node() or 'this machine'}"
    if not folder.is_absolute():
        return f"{path} must be an absolute path"
    if not folder.exists():
        return f"{folder} does not exist {where}"
    if not folder.is_dir():
        return f"{folder} is not a directory {where}"
    return None
