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

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keystore.errors import InvalidInput

__all__ = [
    "INTERRUPTED_TOOL",
    "Session",
    "find_transcript",
    "latest_transcript",
    "made_progress",
    "project_key",
    "repair",
]

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


# What a resumed session is told about a tool call whose result never reached the transcript
# (the CLI was killed mid-tool). Worded like the CLI's own repair (2.1.332), which keyrelay does
# not rely on: older versions sent such a transcript as is and the API refused it (400).
INTERRUPTED_TOOL = (
    "[Tool call interrupted: the session ended before this call's result was recorded, so its "
    "outcome is unknown. Check whether it took effect before relying on it or running it again.]"
)


def repair(transcript: str) -> tuple[str, list[str]]:
    """The transcript cut back to a point a `--resume` can continue from, and the ids of the
    tool calls found interrupted.

    - A line a crash left half-written (not a JSON object) is dropped, with anything after it.
    - Every `tool_use` of the trailing assistant entries that has no `tool_result` gets one: an
      `is_error` result saying the call was interrupted and its outcome is unknown, so the model
      checks rather than blindly redoes it, and the API never sees a call without a result.
    Entries are kept otherwise (a synthetic API-error entry stays: the CLI leaves it out of the
    request itself, and later entries are chained to it by parentUuid)."""
    entries: list[dict[str, Any]] = []
    kept: list[str] = []
    for line in transcript.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            break
        if not isinstance(entry, dict):
            break
        entries.append(entry)
        kept.append(line)
    answered = {
        block.get("tool_use_id")
        for entry in entries
        if entry.get("type") == "user"
        for block in _blocks(entry)
        if block.get("type") == "tool_result"
    }
    pending: list[tuple[str, str]] = []  # (tool_use id, uuid of its entry)
    for entry in reversed(entries):
        if entry.get("type") == "user" and "uuid" in entry:
            break  # calls before the last user entry were answered in it (or were abandoned)
        if entry.get("type") == "assistant":
            pending += [
                (str(block.get("id")), str(entry.get("uuid")))
                for block in _blocks(entry)
                if block.get("type") == "tool_use" and block.get("id") not in answered
            ]
    parent = next((e.get("uuid") for e in reversed(entries) if "uuid" in e), None)
    for tool_use_id, call_entry in reversed(pending):
        result = _interrupted_result(entries, tool_use_id, call_entry, parent)
        kept.append(json.dumps(result, separators=(",", ":")))
        parent = result["uuid"]
    return "\n".join(kept) + "\n", [tool_use_id for tool_use_id, _ in reversed(pending)]


def _blocks(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    message = entry.get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _interrupted_result(
    entries: list[dict[str, Any]], tool_use_id: str, call_entry: str, parent: Any
) -> dict[str, Any]:
    last = entries[-1] if entries else {}
    common: dict[str, Any] = {
        k: last[k] for k in ("sessionId", "cwd", "version", "userType") if k in last
    }
    return {
        **common,
        "type": "user",
        "uuid": str(uuid.uuid4()),
        "parentUuid": parent,
        "isSidechain": False,
        "sourceToolAssistantUUID": call_entry,
        "toolDenialKind": "interrupted",
        "toolUseResult": INTERRUPTED_TOOL,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "message": {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": tool_use_id,
                    "is_error": True,
                    "content": INTERRUPTED_TOOL,
                }
            ],
        },
    }


def latest_transcript(config_dir: Path, session_id: str | None) -> tuple[Path, str] | None:
    """After a turn that ended early: its session's transcript (the one it resumed, or the one
    it started: a fresh config dir holds no other), with the session id."""
    if session_id is not None:
        path = find_transcript(config_dir, session_id)
        return (path, session_id) if path is not None else None
    found = sorted(
        (p for p in (config_dir / "projects").glob("*/*.jsonl") if _SESSION_ID.fullmatch(p.stem)),
        key=lambda p: p.stat().st_mtime_ns,
    )
    return (found[-1], found[-1].stem) if found else None


def made_progress(transcript: str, *, since: str) -> bool:
    """Whether the model answered at all after `since` (the transcript the turn started from):
    a real assistant entry, not only the prompt and a synthetic API-error message."""
    added = transcript[len(since) :] if transcript.startswith(since) else transcript
    for line in added.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("type") != "assistant":
            continue
        message = entry.get("message")
        model = message.get("model") if isinstance(message, Mapping) else None
        if model != "<synthetic>" and not entry.get("isApiErrorMessage"):
            return True
    return False
