"""`keyrelay demo` end to end: the real console script in a subprocess, shortened by its flags.

It must finish every run with at least one rotation, deferral and resumption, never let the
emulator serve a window over its limit, and leave no process or file behind; a second demo right
after works the same; a demo interrupted with SIGINT mid-way stops everything too. The
claude-code demo runs the real CLI through the same stack."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

KEYRELAY = Path(sys.executable).parent / "keyrelay"
# 3 runs x 2 turns on 3 keys of 1 request per 8 s, at most 2 leases per key: the first window
# serves 3 of the 6 turns, so runs rotate, then defer and resume at the next window.
SHORT = ["--runs", "3", "--steps", "2", "--window", "8", "--requests", "1", "--timeout", "150"]
WORKDIR_LINE = re.compile(r"working directory (\S+)")
TURNS_ON = re.compile(r"Completed \(turns on ([^)]*)\)")


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment names `text` (the demo's directory is
    in every child's PREFECT_HOME)."""
    needle = text.encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if (
                needle in (entry / "cmdline").read_bytes()
                or needle in (entry / "environ").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has exited


def _run_demo(*args: str) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        [str(KEYRELAY), "demo", *(args or SHORT), "--json"],
        capture_output=True,
        text=True,
        timeout=400,  # the claude-code demo installs the CLI from npm on a fresh machine
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout), result.stderr


def test_demo_completes_every_run_and_leaves_nothing_behind_twice() -> None:
    for _ in (1, 2):
        summary, progress = _run_demo()
        assert summary["runs"] == summary["completed"] == 3, progress[-3000:]
        assert summary["failed"] == 0
        assert set(summary["run_states"].values()) == {"Completed"}
        assert summary["turns"] == 6
        assert summary["served"] == 6  # one successful provider call per turn, none repeated
        # A run moves to another key: after a refusal (key_rotated), or, when the keystore
        # already knew from the headers that its key was spent, before sending anything
        # (timing decides which; CI saw a demo with no refusal at all).
        keys_per_run = [set(m.split(", ")) for m in TURNS_ON.findall(progress)]
        moved = summary["rotations"] >= 1 or any(len(keys) > 1 for keys in keys_per_run)
        assert moved, progress[-3000:]
        assert summary["deferrals"] >= 1 and summary["resumptions"] >= 1, progress[-3000:]
        assert summary["resume_lateness_max_s"] is not None
        assert summary["wasted_429s"] == summary["rate_limited"] >= 1
        assert summary["served_over_limit"] == 0
        assert summary["prefect_ui"].startswith("http://127.0.0.1:")
        # what a person watching sees, as plain lines (stderr is not a terminal)
        assert "AwaitingRateLimit until" in progress
        assert re.search(r"resumed [+-]\d+\.\d\d s after its reset", progress)
        assert ("rotated" in progress) == (summary["rotations"] >= 1)
        # nothing left: the children it reports, anything else started from its directory
        assert len(summary["pids"]) == 2  # the Prefect server and the serve process
        assert not [pid for pid in summary["pids"] if _alive(pid)]
        assert _processes_mentioning(summary["workdir"]) == []
        assert not Path(summary["workdir"]).exists()


def test_the_claude_code_demo_does_its_job_once_across_a_rotation_and_a_deferral() -> None:
    """`keyrelay demo --agent claude-code`: one real `claude -p` job of many tool calls in one
    turn, on 3 keys of 2 requests per 15 s: the turn rotates mid-way, every key is spent, the
    run defers, resumes the same turn at the reset, and each tool step ran exactly once."""
    summary, progress = _run_demo("--agent", "claude-code")
    assert summary["runs"] == summary["completed"] == 1, progress[-3000:]
    assert summary["run_states"] == {"demo-1": "Completed"}
    assert summary["rotations"] >= 1 and summary["deferrals"] >= 1, progress[-3000:]
    assert summary["resumptions"] >= 1
    assert summary["served_over_limit"] == 0
    steps = summary["job_files"]["progress.txt"].split()
    assert steps == [f"step{n}" for n in range(1, len(steps) + 1)] and len(steps) >= 4, steps
    assert summary["job_steps_once"] is True
    assert re.search(r"resumed [+-]\d+\.\d\d s after its reset", progress)
    assert not [pid for pid in summary["pids"] if _alive(pid)]
    assert _processes_mentioning(summary["workdir"]) == []
    assert not Path(summary["workdir"]).exists()


def test_demo_interrupted_midway_stops_everything() -> None:
    process = subprocess.Popen(
        [str(KEYRELAY), "demo", *SHORT],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    workdir = None
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if match := WORKDIR_LINE.search(line):
                workdir = match.group(1)
            if ": Running" in line:  # flow runs are executing: the busiest moment to stop
                break
        assert workdir is not None and Path(workdir).exists(), "".join(seen)
        assert _processes_mentioning(workdir), "nothing was running from the demo's directory"
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = "".join(seen) + rest
    assert process.returncode == 130, output[-3000:]
    assert "interrupted" in rest
    assert "stopped everything the demo started" in rest
    assert "summary" not in rest
    assert _processes_mentioning(workdir) == []
    assert not Path(workdir).exists()
