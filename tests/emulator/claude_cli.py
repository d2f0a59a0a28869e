"""Driving the REAL `claude` CLI against the emulator, the way an executor runs it: an isolated
HOME / CLAUDE_CONFIG_DIR, the emulator as ANTHROPIC_BASE_URL, retries and telemetry off.

Also reads what a run leaves behind: the session transcript and its conversation entries.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.emulator import RunningEmulator

__all__ = [
    "Turn",
    "claude_env",
    "conversation",
    "copy_transcript",
    "require_claude_bin",
    "run_claude",
    "start_claude",
    "transcript_path",
]

_OUTPUT = ("--output-format", "stream-json", "--verbose")


def require_claude_bin() -> Path:
    """The pinned CLI; a test fails (never skips) without it: CI installs it."""
    from flows.executors.claude_bin import ClaudeBinaryUnavailable, ensure_claude_bin

    try:
        return ensure_claude_bin()
    except ClaudeBinaryUnavailable as exc:
        pytest.fail(f"the real claude CLI is required (CI installs it) and is missing: {exc}")


@dataclass
class Turn:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        (result,) = [e for e in self.events if e["type"] == "result"]
        return result

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def claude_env(emu: RunningEmulator, *, home: Path, credential: dict[str, str]) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": emu.base_url,
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        **credential,
    }


def run_claude(
    claude_bin: Path,
    emu: RunningEmulator,
    *args: str,
    home: Path,
    cwd: Path,
    credential: dict[str, str],
) -> Turn:
    """One `claude -p` turn, to its end."""
    completed = subprocess.run(
        [str(claude_bin), "-p", *args, *_OUTPUT],
        env=claude_env(emu, home=home, credential=credential),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    events = [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]
    return Turn(completed.returncode, events, completed.stderr)


def start_claude(
    claude_bin: Path,
    emu: RunningEmulator,
    *args: str,
    home: Path,
    cwd: Path,
    credential: dict[str, str],
) -> subprocess.Popen[str]:
    """A `claude -p` turn left running (to be killed mid-way); its output is discarded."""
    return subprocess.Popen(
        [str(claude_bin), "-p", *args, *_OUTPUT],
        env=claude_env(emu, home=home, credential=credential),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def transcript_path(home: Path, session_id: str) -> Path:
    """`$CLAUDE_CONFIG_DIR/projects/<cwd, every non-alphanumeric char as "-">/<session>.jsonl`."""
    (path,) = (home / ".claude" / "projects").glob(f"*/{session_id}.jsonl")
    return path


def copy_transcript(transcript: Path, *, cwd: Path, home: Path) -> None:
    """Put a transcript, alone, into a fresh config dir under `home`, where a resume finds it."""
    project = home / ".claude" / "projects" / re.sub(r"[^A-Za-z0-9]", "-", str(cwd))
    project.mkdir(parents=True)
    shutil.copy(transcript, project / transcript.name)


def conversation(transcript: Path) -> list[dict[str, Any]]:
    """The transcript's user and assistant entries, in file order (bookkeeping entries left out:
    attachments, api-request*, queue-operation, last-prompt, cost-state, ...)."""
    entries = [json.loads(line) for line in transcript.read_text().splitlines() if line.strip()]
    return [e for e in entries if e.get("type") in ("user", "assistant")]
