"""The `claude-code` agent: one headless `claude -p` run of the real CLI per turn.

    claude -p --output-format stream-json --verbose [--model M] [--resume <session_id>]
    (the prompt on stdin: no argv size limit, and a prompt starting with `-` is not an option)

Each turn gets a fresh private directory with HOME, CLAUDE_CONFIG_DIR and TMPDIR, deleted after
the turn; the key goes only into the child's environment (subprocess_env.py). The checkpoint
carries the session transcript (transcript.py), so the next turn resumes the same conversation
on any key, in any process, on any machine. The working directory is the `workdir` option, or a
temporary directory per executor.

Outcome: whatever `parse_claude_code_output` classifies in the stream-json events (the
`rate_limit_event` of a subscription, the `result` of an API-key 429, overload) is returned as
the signal; a successful `result` becomes the TurnResult; anything else raises (errors.py).

Known cost (CLAUDE_CLI_NOTES.md): even with CLAUDE_CODE_MAX_RETRIES=0 the CLI re-sends a turn
once without streaming when a 200 stream breaks off with `event: error`, and re-sends once after
a 401 on an OAuth token: such a turn can cost two provider calls.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio.to_thread

from flows.executors.base import Report, TurnOutcome, TurnResult, check_prompt
from flows.executors.claude_bin import ensure_claude_bin
from flows.executors.cli_output import turn_failure, turn_usage, turn_utilization
from flows.executors.cli_process import CliOutput, run_cli
from flows.executors.errors import AgentFailed, ExecutorError, ProviderTimeout
from flows.executors.redact import Redactor
from flows.executors.subprocess_env import check_extra_env, child_env
from flows.executors.transcript import Session, find_transcript
from keystore.clock import Clock, utcnow
from keystore.errors import InvalidInput
from keystore.lease import Lease
from keystore.ratelimits import parse_claude_code_output

__all__ = ["ClaudeCodeExecutor"]

log = logging.getLogger(__name__)
AGENT = "claude-code"
# Flags the executor owns; `extra_args` may add others (`--permission-mode`, `--allowedTools`).
_OWNED_FLAGS = frozenset(
    {
        "-p",
        "--print",
        "--output-format",
        "--input-format",
        "--verbose",
        "--model",
        "-r",
        "--resume",
        "-c",
        "--continue",
        "--session-id",
        "--fork-session",
    }
)


class ClaudeCodeExecutor:
    agent = AGENT

    def __init__(
        self,
        *,
        claude_bin: str | Path | None = None,
        workdir: str | Path | None = None,
        base_url: str | None = None,
        default_model: str | None = None,
        timeout_s: float = 900.0,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        if timeout_s <= 0:
            raise InvalidInput("timeout_s: must be greater than 0")
        owned = sorted({a.split("=", 1)[0] for a in extra_args} & _OWNED_FLAGS)
        if owned:
            raise InvalidInput(f"extra_args: the executor sets {', '.join(owned)} itself")
        self.extra_args = tuple(extra_args)
        self.extra_env = check_extra_env(extra_env or {})
        self.claude_bin = Path(claude_bin) if claude_bin is not None else None
        self.base_url = base_url
        self.default_model = default_model
        self.timeout_s = timeout_s
        self._clock = clock
        if workdir is None:
            created = tempfile.mkdtemp(prefix="keyrelay-claude-work-")
            weakref.finalize(self, shutil.rmtree, created, True)
            workdir = created
        # The CLI files sessions under the resolved path; resolve once so both agree.
        self.workdir = Path(workdir).resolve()
        if not self.workdir.is_dir():
            raise InvalidInput(f"workdir: {self.workdir} is not a directory")

    def __repr__(self) -> str:
        return f"ClaudeCodeExecutor(workdir={str(self.workdir)!r})"

    async def _binary(self) -> Path:
        if self.claude_bin is None:
            # May install the CLI once (minutes); keep the event loop free meanwhile.
            self.claude_bin = await anyio.to_thread.run_sync(ensure_claude_bin)
        return self.claude_bin

    def _argv(self, binary: Path, model: str | None, session: Session | None) -> list[str]:
        argv = [str(binary), "-p", "--output-format", "stream-json", "--verbose"]
        if model or self.default_model:
            argv += ["--model", str(model or self.default_model)]
        if session is not None:
            argv += ["--resume", session.session_id]
        return argv + list(self.extra_args)

    async def run_turn(
        self,
        lease: Lease,
        *,
        prompt: str,
        model: str | None,
        checkpoint: dict[str, Any] | None,
        report: Report | None = None,
    ) -> TurnOutcome:
        check_prompt(prompt)
        session = Session.from_checkpoint(checkpoint) if checkpoint is not None else None
        binary = await self._binary()
        with tempfile.TemporaryDirectory(
            prefix="keyrelay-claude-turn-", ignore_cleanup_errors=True
        ) as turn:
            home = Path(turn) / "home"
            config_dir = home / ".claude"
            tmp_dir = Path(turn) / "tmp"
            for folder in (config_dir, tmp_dir):
                folder.mkdir(parents=True)
            if session is not None:
                session.restore(config_dir=config_dir, cwd=self.workdir)
            secret = lease.secret()
            redactor = Redactor(secret)
            env = child_env(
                secret=secret,
                home=home,
                config_dir=config_dir,
                tmp_dir=tmp_dir,
                base_url=self.base_url,
                extra=self.extra_env,
            )
            del secret
            output: CliOutput | None = None
            failed_to_start: OSError | None = None
            try:
                output = await run_cli(
                    self._argv(binary, model, session),
                    env=env,
                    cwd=self.workdir,
                    stdin=prompt.encode(),
                    timeout_s=self.timeout_s,
                )
            except TimeoutError:
                pass
            except OSError as exc:  # not executable, vanished, workdir gone
                failed_to_start = exc
            finally:
                env.clear()
            if failed_to_start is not None:
                raise AgentFailed(
                    f"{AGENT} key {lease.key_id}: could not start {binary}: "
                    f"{redactor.excerpt(str(failed_to_start))}",
                    agent=AGENT,
                    key_id=lease.key_id,
                )
            if output is None:
                raise ProviderTimeout(
                    f"{AGENT} key {lease.key_id}: no result within {self.timeout_s:g} s; "
                    "the CLI was killed",
                    agent=AGENT,
                    key_id=lease.key_id,
                )
            outcome = self._outcome(
                output,
                config_dir=config_dir,
                lease=lease,
                redactor=redactor,
                received_at=self._clock(),
            )
        if isinstance(outcome, ExecutorError):
            raise outcome
        return outcome

    def _outcome(
        self,
        output: CliOutput,
        *,
        config_dir: Path,
        lease: Lease,
        redactor: Redactor,
        received_at: datetime,
    ) -> TurnOutcome | ExecutorError:
        signal = parse_claude_code_output(output.events, received_at=received_at)
        if signal is not None:
            log.debug("claude turn on key %s: %s signal", lease.key_id, signal.kind)
            return signal
        results = [e for e in output.events if e.get("type") == "result"]
        result = results[-1] if results else None
        if result is None or output.returncode != 0 or result.get("is_error") is True:
            return turn_failure(output, result, key_id=lease.key_id, redactor=redactor)
        session_id = result.get("session_id")
        path = find_transcript(config_dir, session_id) if isinstance(session_id, str) else None
        if path is None:
            return AgentFailed(
                f"{AGENT} key {lease.key_id}: the turn succeeded but left no session transcript "
                f"for session {redactor.excerpt(str(session_id), limit=80)}",
                agent=AGENT,
                key_id=lease.key_id,
            )
        session = Session(
            session_id=str(session_id),
            transcript=redactor.text(path.read_text(encoding="utf-8")),
            cwd_key=path.parent.name,
        )
        reply = result.get("result")
        return TurnResult(
            text=redactor.text(reply if isinstance(reply, str) else ""),
            checkpoint=session.to_checkpoint(),
            utilization=turn_utilization(output.events),
            usage=turn_usage(result),
        )
