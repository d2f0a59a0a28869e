"""The demo's closing numbers, from the audit log (rotations, deferrals, resume lateness), the
runs' final Prefect states and the emulator's counters (429s = wasted calls, and whether any window
ever served over its limit: it must not)."""

from __future__ import annotations

from pathlib import Path
from statistics import fmean

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from api.demo.observe import Snapshot
from api.demo.options import JOB_FILE
from api.emulator import RunningEmulator
from keystore import Keystore

__all__ = ["DemoSummary", "print_summary", "summarize"]

LATE_NOTE_S = 2.0  # resumptions later than this get a word on why


class DemoSummary(BaseModel):
    runs: int
    completed: int
    failed: int  # finished in any other state (Failed, Crashed, Cancelled) or never finished
    run_states: dict[str, str]  # run name -> final state
    turns: int  # turns finished across all runs
    rate_limited: int  # key_rate_limited rows
    rotations: int  # key_rotated rows
    deferrals: int  # pool_waiting rows
    resumptions: int  # pool_resumed rows
    resume_lateness_mean_s: float | None
    resume_lateness_max_s: float | None
    provider_calls: int  # requests the emulator answered
    served: int
    wasted_429s: int
    served_over_limit: int  # requests served into a window already at its limit: must be 0
    wall_time_s: float
    prefect_ui: str
    kept: bool  # --keep: everything is still running
    workdir: str
    pids: list[int]  # the child processes the demo started (all stopped unless kept)
    # claude-code: the files the job made in its working directory, and whether each of its
    # tool steps left its line exactly once, in order (a step run twice would show twice)
    job_files: dict[str, str] = {}
    job_steps_once: bool | None = None


def _job(job_dir: Path | None, steps: int) -> tuple[dict[str, str], bool | None]:
    if job_dir is None:
        return {}, None
    files = {
        str(path.relative_to(job_dir)): path.read_text(errors="replace")[:2000]
        for path in sorted(job_dir.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }
    lines = files.get(JOB_FILE, "").splitlines()
    return files, lines == [f"step{n}" for n in range(1, steps + 1)]


def summarize(
    *,
    snapshot: Snapshot,
    store: Keystore,
    emulator: RunningEmulator,
    wall_time_s: float,
    prefect_ui: str,
    kept: bool,
    workdir: str,
    pids: list[int],
    job_dir: Path | None = None,
    job_steps: int = 0,
) -> DemoSummary:
    def count(kind: str) -> int:
        return len(store.audit_events(limit=10_000, type=kind))

    lateness = [
        float(event.details["lateness_s"])
        for event in store.audit_events(limit=10_000, type="pool_resumed")
        if "lateness_s" in event.details
    ]
    keys = emulator.admin.keys()
    buckets = emulator.admin.buckets()
    completed = sum(run.completed for run in snapshot.runs)
    job_files, job_steps_once = _job(job_dir, job_steps)
    return DemoSummary(
        runs=len(snapshot.runs),
        completed=completed,
        failed=len(snapshot.runs) - completed,
        run_states={run.name: run.state for run in snapshot.runs},
        turns=sum(run.turns_done for run in snapshot.runs),
        rate_limited=count("key_rate_limited"),
        rotations=count("key_rotated"),
        deferrals=count("pool_waiting"),
        resumptions=len(lateness),
        resume_lateness_mean_s=round(fmean(lateness), 3) if lateness else None,
        resume_lateness_max_s=round(max(lateness), 3) if lateness else None,
        provider_calls=sum(k.requests for k in keys),
        served=sum(k.served for k in keys),
        wasted_429s=sum(k.rate_limited for k in keys),
        served_over_limit=sum(b.served_over_limit for b in buckets),
        wall_time_s=round(wall_time_s, 1),
        prefect_ui=prefect_ui,
        kept=kept,
        workdir=workdir,
        pids=pids,
        job_files=job_files,
        job_steps_once=job_steps_once,
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f} s"


def print_summary(summary: DemoSummary, console: Console) -> None:
    table = Table(title="keyrelay demo: summary", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    over = summary.served_over_limit
    rows = [
        ("runs completed", f"{summary.completed} of {summary.runs}"),
        ("turns served", str(summary.turns)),
        ("rate limits hit (429)", str(summary.rate_limited)),
        ("rotations to another key", str(summary.rotations)),
        ("deferrals (AwaitingRateLimit)", str(summary.deferrals)),
        ("resumptions", str(summary.resumptions)),
        (
            "resume lateness mean / max",
            (
                f"{_seconds(summary.resume_lateness_mean_s)} / "
                f"{_seconds(summary.resume_lateness_max_s)}"
            ),
        ),
        ("provider calls / wasted on 429s", f"{summary.provider_calls} / {summary.wasted_429s}"),
        ("served over a window's limit", "0 (never)" if over == 0 else f"[bold red]{over}[/]"),
        ("wall time", f"{summary.wall_time_s:.1f} s"),
        ("Prefect UI", summary.prefect_ui),
    ]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
    if (summary.resume_lateness_max_s or 0) > LATE_NOTE_S:
        console.print(
            "Lateness includes waiting for a free slot of the serve process (--limit) and for "
            "a flow-run process to start: runs due at the same reset queue for the slots."
        )
    for name, content in summary.job_files.items():
        console.print(f"[bold]{name}[/] (made by the agent's tool calls):\n{content.rstrip()}")
    if summary.job_steps_once is not None:
        verdict = "yes" if summary.job_steps_once else "[bold red]NO[/]"
        console.print(f"each tool step ran exactly once, in order: {verdict}")
    failed = [
        f"{name} {state}" for name, state in summary.run_states.items() if state != "Completed"
    ]
    if failed:
        console.print(f"[bold red]not completed:[/] {', '.join(failed)}")
