"""The `claude-code` checkpoint: the CLI session's transcript, carried from turn to turn.

    {"session_id": "<uuid>", "transcript": "<the session .jsonl>", "cwd_key": "-work-dir"}

The CLI keeps a session in `$CLAUDE_CONFIG_DIR/projects/<cwd_key>/<session_id>.jsonl`, where
`cwd_key` is the working directory with every non-alphanumeric character replaced by `-`
(CLAUDE_CLI_NOTES.md). That file is all `claude -p --resume <session_id>` needs, so each turn runs
in a fresh config dir: the executor writes the checkpoint's transcript under the current
working directory's key, and after a successful turn reads the (appended) transcript back.
A failed turn's changes die with its config dir: a retry from the same checkpoint does not see
the failed attempt's prompt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keystore.errors import InvalidInput

__all__ = ["Session", "find_transcript", "project_key"]

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # also safe as a file name
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")


def project_key(cwd: Path) -> str:
    """The directory name the CLI files a working directory's sessions under."""
    return _NON_ALNUM.sub("-", str(cwd))


@dataclass(frozen=True)
class Session:
    session_id: str
    transcript: str
    cwd_key: str

    def __repr__(self) -> str:
        return f"Session({self.session_id}, {len(self.transcript)} chars, {self.cwd_key})"

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> Session:
        if not isinstance(checkpoint, Mapping):
            raise InvalidInput("checkpoint: must be a JSON object with session_id and transcript")
        session_id = checkpoint.get("session_id")
        transcript = checkpoint.get("transcript")
        cwd_key = checkpoint.get("cwd_key", "")
        if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
            raise InvalidInput("checkpoint.session_id: must be a claude session id")
        if not isinstance(transcript, str) or not transcript.strip():
            raise InvalidInput("checkpoint.transcript: must be the session's non-empty JSONL")
        if not isinstance(cwd_key, str):
            raise InvalidInput("checkpoint.cwd_key: must be a string")
        return cls(session_id=session_id, transcript=transcript, cwd_key=cwd_key)

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "transcript": self.transcript,
            "cwd_key": self.cwd_key,
        }

    def restore(self, *, config_dir: Path, cwd: Path) -> Path:
        """Write the transcript where a `--resume` from `cwd` looks for it first."""
        folder = config_dir / "projects" / project_key(cwd)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.session_id}.jsonl"
        path.write_text(self.transcript, encoding="utf-8")
        return path


def find_transcript(config_dir: Path, session_id: str) -> Path | None:
    """The session's transcript after a turn, wherever the CLI filed it (it appends to a resumed
    session's file even when that sits under another project key); the newest if several."""
    if not _SESSION_ID.fullmatch(session_id):
        return None
    found = sorted(
        (config_dir / "projects").glob(f"*/{session_id}.jsonl"),
        key=lambda p: p.stat().st_mtime_ns,
    )
    return found[-1] if found else None
