"""The `claude-code` agent: one headless `claude -p` run of the real CLI per turn.

    claude -p --output-format stream-json --verbose [--model M] [--resume <session_id>]
           [the job's flags: --allowedTools ..., --permission-mode ..., ...]
    (the prompt on stdin: no argv size limit, and a prompt starting with `-` is not an option)

Each turn gets a fresh private directory with HOME, CLAUDE_CONFIG_DIR and TMPDIR, deleted after
the turn; the CLI runs in a sandbox (sandbox.py: bubblewrap, when the mode and the machine allow)
and talks to a per-turn relay on 127.0.0.1 (relay.py) that holds the leased key: the CLI's
environment has only a placeholder, worthless anywhere else. The relay hands every response to
`report` as it arrives (the keystore learns each bucket mid-turn) and answers a request `gate`
says must fail with a local 429, without a provider call. The checkpoint carries
the session transcript (transcript.py), so the next turn resumes the same conversation on any
key, in any process, on any machine. The working directory is the `workdir` option, or a
temporary directory per executor.

A turn that ends without a successful result (a limit, an overload, a timeout, a crash, a
cancelled turn) hands what it got done to `keep_partial` before it returns, raises or is
cancelled: the session transcript as far as it got, repaired to a point a `--resume` can go on
from (a tool call the CLI was killed in gets an "interrupted" result). The flow resumes that
session on the next key with a prompt that restates the task, so no tool call that completed is
made again.

Outcome: whatever `parse_claude_code_output` classifies in the stream-json events (the
`rate_limit_event` of a subscription, the `result` of an API-key 429, overload) is returned as
the signal; a successful `result` becomes the TurnResult; anything else raises (errors.py).

Known cost (CLAUDE_CLI_NOTES.md): even with CLAUDE_CODE_MAX_RETRIES=0 the CLI re-sends a turn
once without streaming when a 200 stream breaks off with `event: error`, and re-sends once after
a 401 on an OAuth token: such a turn can cost two provider calls.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio.to_thread

from flows.executors.base import KeepPartial, Report, TurnOutcome, TurnResult, check_prompt
from flows.executors.claude_bin import ensure_claude_bin
from flows.executors.cli_output import turn_failure, turn_usage, turn_utilization
from flows.executors.cli_process import CliOutput, run_cli
from flows.executors.errors import AgentFailed, ExecutorError, ProviderTimeout
from flows.executors.redact import Redactor
from flows.executors.relay import Gate, Relay
from flows.executors.sandbox import Sandbox, SandboxMode, read_from_sandbox
from flows.executors.subprocess_env import check_extra_env, child_env
from flows.executors.transcript import (
    Session,
    find_transcript,
    latest_transcript,
    made_progress,
    repair,
)
from flows.job import AgentJob
from keystore.clock import Clock, utcnow
from keystore.errors import InvalidInput
from keystore.lease import Lease
from keystore.ratelimits import parse_claude_code_output

__all__ = ["ClaudeCodeExecutor"]

log = logging.getLogger(__name__)
AGENT = "claude-code"
DEFAULT_UPSTREAM = "https://api.anthropic.com"
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
        job: AgentJob | None = None,
        sandbox: SandboxMode = "auto",
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        if timeout_s <= 0:
            raise InvalidInput("timeout_s: must be greater than 0")
        owned = sorted({a.split("=", 1)[0] for a in extra_args} & _OWNED_FLAGS)
        if owned:
            raise InvalidInput(f"extra_args: the executor sets {', '.join(owned)} itself")
        self.job = job or AgentJob()
        self.job.check_dirs()
        self.extra_args = tuple(extra_args)
        self.extra_env = check_extra_env(extra_env or {})
        self.claude_bin = Path(claude_bin) if claude_bin is not None else None
        self.base_url = base_url
        self.default_model = default_model
        self.timeout_s = timeout_s
        self.sandbox = Sandbox(sandbox)
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
        return f"ClaudeCodeExecutor(workdir={str(self.workdir)!r}, sandbox={self.sandbox.mode!r})"

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
        return argv + self.job.to_cli_args() + list(self.extra_args)

    async def run_turn(
        self,
        lease: Lease,
        *,
        prompt: str,
        model: str | None,
        checkpoint: dict[str, Any] | None,
        report: Report | None = None,
        keep_partial: KeepPartial | None = None,
        gate: Gate | None = None,
    ) -> TurnOutcome:
        """`gate` is asked before each of the CLI's requests (relay.py): a signal it returns is
        answered with a local 429 and becomes the turn's outcome."""
        check_prompt(prompt)
        session = Session.from_checkpoint(checkpoint) if checkpoint is not None else None
        binary = await self._binary()
        warning = await anyio.to_thread.run_sync(self.sandbox.check)
        if warning is not None:
            log.warning("%s", warning)
        with tempfile.TemporaryDirectory(
            prefix="keyrelay-claude-turn-", ignore_cleanup_errors=True
        ) as turn_dir:
            turn = _TurnDirs(Path(turn_dir))
            if session is not None:
                session.restore(config_dir=turn.config_dir, cwd=self.workdir)
            secret = lease.secret()
            redactor = Redactor(secret)
            done = False
            try:
                async with Relay(
                    secret=secret, upstream=self._upstream(), report=report, gate=gate
                ) as relay:
                    del secret  # only the relay holds it now; the CLI gets its placeholder
                    output = await self._run_cli(
                        binary, model, session, turn, relay, warning, prompt
                    )
                outcome = relay.last_refusal or self._outcome(
                    output,
                    config_dir=turn.config_dir,
                    lease=lease,
                    redactor=redactor,
                    received_at=self._clock(),
                )
                done = isinstance(outcome, TurnResult)
            finally:
                if not done and keep_partial is not None:
                    with anyio.CancelScope(shield=True):  # also when the turn was cancelled
                        partial = self._partial(turn.config_dir, session, redactor)
                        if partial is not None:
                            await keep_partial(partial)
        if isinstance(outcome, ExecutorError):
            raise outcome
        return outcome

    async def _run_cli(
        self,
        binary: Path,
        model: str | None,
        session: Session | None,
        turn: _TurnDirs,
        relay: Relay,
        sandbox_warning: str | None,
        prompt: str,
    ) -> CliOutput | ExecutorError:
        env = child_env(
            secret=relay.placeholder,
            home=turn.home,
            config_dir=turn.config_dir,
            tmp_dir=turn.tmp_dir,
            extra=self.extra_env,
        )
        env.update(relay.child_env())
        if self.sandbox.mode != "off" and sandbox_warning is None:
            env["IS_SANDBOX"] = "1"  # the CLI allows bypassPermissions inside a sandbox only
        writable = [turn.root, *(Path(d).resolve() for d in self.job.add_dirs)]
        argv, wrapped = self.sandbox.wrap(
            self._argv(binary, model, session), env, cwd=self.workdir, writable=writable
        )
        env.clear()
        try:
            return await run_cli(
                argv, env=wrapped, cwd=self.workdir, stdin=prompt.encode(), timeout_s=self.timeout_s
            )
        except TimeoutError:
            return ProviderTimeout(
                f"{AGENT}: no result within {self.timeout_s:g} s; the CLI was killed", agent=AGENT
            )
        except OSError as exc:  # not executable, vanished, workdir gone
            return AgentFailed(f"{AGENT}: could not start {binary}: {exc}"[:500], agent=AGENT)
        finally:
            wrapped.clear()

    def _upstream(self) -> str:
        """Where the relay forwards: the `base_url` option, else the worker's ANTHROPIC_BASE_URL
        (a gateway, the emulator), else Anthropic."""
        return self.base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_UPSTREAM

    def _partial(
        self, config_dir: Path, session: Session | None, redactor: Redactor
    ) -> dict[str, Any] | None:
        """The session as far as the interrupted turn got, repaired for a resume; None when the
        turn got nothing done beyond the checkpoint (a retry then starts it over cleanly)."""
        found = latest_transcript(config_dir, session.session_id if session else None)
        if found is None:
            return None
        path, session_id = found
        try:
            text = redactor.text(read_from_sandbox(path, within=config_dir))
        except (InvalidInput, OSError, UnicodeDecodeError):
            log.warning("the interrupted turn's transcript could not be read back")
            return None
        before = session.transcript if session is not None else ""
        if not made_progress(text, since=before):
            return None
        repaired, interrupted = repair(text)
        partial = Session(session_id=session_id, transcript=repaired, cwd_key=path.parent.name)
        return {**partial.to_checkpoint(), "interrupted_tools": interrupted}

    def _outcome(
        self,
        output: CliOutput | ExecutorError,
        *,
        config_dir: Path,
        lease: Lease,
        redactor: Redactor,
        received_at: datetime,
    ) -> TurnOutcome | ExecutorError:
        if isinstance(output, ExecutorError):
            output.key_id = lease.key_id
            return output
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
            transcript=redactor.text(read_from_sandbox(path, within=config_dir)),
            cwd_key=path.parent.name,
        )
        reply = result.get("result")
        return TurnResult(
            text=redactor.text(reply if isinstance(reply, str) else ""),
            checkpoint=session.to_checkpoint(),
            utilization=turn_utilization(output.events),
            usage=turn_usage(result),
        )


class _TurnDirs:
    """A turn's private directories: HOME (with CLAUDE_CONFIG_DIR inside) and TMPDIR."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.config_dir = self.home / ".claude"
        self.tmp_dir = root / "tmp"
        for folder in (self.config_dir, self.tmp_dir):
            folder.mkdir(parents=True)
