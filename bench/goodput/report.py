"""The markdown section for docs/benchmarks.md: per workload a table (every cell the median and,
in brackets, the range over the repeats) and its plot, then the targets."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass

from bench.goodput.summary import Spread, Summary
from bench.goodput.systems import SYSTEMS
from bench.goodput.targets import Verdict
from bench.goodput.workloads import Workload

__all__ = ["RunInfo", "render"]

PREFECT_SYSTEMS = ("keyrelay-flows",)
PATHS = {
    "new": "the new keystore calls (`acquire(..., input_tokens=)`, `record_response`)",
    "legacy": "the keystore calls from before `record_response` (`acquire(provider, holder)`, "
    "then `mark_limited` / `record_utilization`)",
}
COLUMNS = (
    "| system | makespan s | / lower bound | / oracle | 429s | jobs failed "
    "| client CPU ms / call | added ms p50 | added ms p99 | record+release ms p50 |"
)


@dataclass(frozen=True)
class RunInfo:
    command: str
    repeats: int
    time_scale: float
    elapsed_s: float
    load_before: float
    stamp: str  # names the plots and the runs file
    finished_at: str
    workloads: list[str]

    def plot(self, workload: str) -> str:
        """The workload's plot, relative to docs/."""
        return f"goodput/{self.stamp}-{workload}.png"


def _cell(spread: Spread | None, digits: int = 2) -> str:
    if spread is None:
        return "-"
    if spread.low == spread.high:
        return f"{spread.median:.{digits}f}"
    return f"{spread.median:.{digits}f} ({spread.low:.{digits}f}-{spread.high:.{digits}f})"


def _row(summary: Summary) -> str:
    return (
        f"| `{summary.system}` | {_cell(summary.makespan_s, 1)} | {_cell(summary.over_lower_bound)}"
        f" | {_cell(summary.over_oracle, 3)} | {_cell(summary.refusals, 0)}"
        f" | {_cell(summary.jobs_failed, 0)} | {_cell(summary.cpu_ms_per_call, 1)}"
        f" | {_cell(summary.added_p50_ms, 1)} | {_cell(summary.added_p99_ms, 1)}"
        f" | {_cell(summary.bookkeeping_p50_ms, 1)} |"
    )


def _workload_section(workload: Workload, summaries: list[Summary], plot: str | None) -> list[str]:
    lines = [
        f"#### {workload.title}",
        "",
        f"{workload.jobs} jobs x {workload.turns} calls, {len(workload.keys)} keys; lower bound "
        f"{workload.lower_bound_s():.1f} s.",
        "",
        COLUMNS,
        "|---|---|---|---|---|---|---|---|---|---|",
        *(_row(s) for s in summaries),
        "",
    ]
    if plot:
        lines += [f"![completed calls over time, {workload.name}]({plot})", ""]
    over = sum(s.over_limit for s in summaries)
    if over:
        lines += [
            f"**The emulator served {over} requests over a limit: its numbers are wrong.**",
            "",
        ]
    return lines


def _orchestrator_note(workload: str, summaries: list[Summary]) -> list[str]:
    """The Prefect server runs through every run; only the flows use it. Its CPU during the
    other systems' runs is what it costs idle."""
    flows = [s for s in summaries if s.system in PREFECT_SYSTEMS]
    idle = [
        s.orchestrator_cpu_ms_per_call.median
        for s in summaries
        if s.system not in PREFECT_SYSTEMS and s.orchestrator_cpu_ms_per_call is not None
    ]
    idle_text = (
        f" (idle, during the other systems' runs: {statistics.median(idle):.1f})" if idle else ""
    )
    return [
        f"- `{s.system}` on `{workload}`: the Prefect server used "
        f"{_cell(s.orchestrator_cpu_ms_per_call, 1)} ms of CPU per finished call{idle_text}, "
        "besides the client's."
        for s in flows
        if s.orchestrator_cpu_ms_per_call is not None
    ]


def _notes(workload: str, summaries: list[Summary]) -> list[str]:
    lines = _orchestrator_note(workload, summaries)
    for summary in summaries:
        lines += [f"- `{summary.system}` on `{workload}`: {error}" for error in summary.errors]
    return lines


def _targets(verdicts: list[Verdict]) -> list[str]:
    lines = [
        "| system | workload | target | measured | |",
        "|---|---|---|---|---|",
    ]
    for v in verdicts:
        digits = 0 if "429" in v.target else (3 if v.unit == "x" else 1)
        measured = _cell(v.measured, digits) + v.unit
        lines.append(
            f"| `{v.system}` | {v.workload} | {v.target} | {measured} | "
            f"{'met' if v.met else '**missed**'} |"
        )
    return lines


def render(
    info: RunInfo,
    workloads: list[Workload],
    summaries: dict[tuple[str, str], Summary],
    verdicts: list[Verdict],
    *,
    plots: bool,
) -> str:
    paths = sorted(
        PATHS.get(s.keystore_path, s.keystore_path)
        for s in summaries.values()
        if s.keystore_path and s.system.startswith("keyrelay-pool")
    )
    lines = [
        f"### Goodput against an oracle, {info.finished_at} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}, time scale "
        f"{info.time_scale:g}, {info.repeats} interleaved repeats, {info.elapsed_s / 60:.0f} min, "
        f"load average {info.load_before:.1f} before)",
        "",
        f"`{info.command}`",
        "",
        "Cells: median (min-max) over the repeats. `/ oracle`: the makespan over the oracle's in "
        "the same repeat. 429s: refusals the emulator answered. Client CPU: the client process "
        "between the start and its last job's end, per call served. Added: keyrelay's time from "
        "wanting a key to sending the request, per attempt; record+release: its bookkeeping "
        "after each answer. The pool API used "
        f"{'; '.join(sorted(set(paths))) or '-'}.",
        "",
    ]
    by_workload: dict[str, list[Summary]] = {}
    for (workload_name, _system), summary in summaries.items():
        by_workload.setdefault(workload_name, []).append(summary)
    order = {name: i for i, name in enumerate(SYSTEMS)}
    for workload in workloads:
        rows = sorted(by_workload.get(workload.name, []), key=lambda s: order[s.system])
        lines += _workload_section(workload, rows, info.plot(workload.name) if plots else None)
    if verdicts:
        lines += ["#### keyrelay against the targets", "", *_targets(verdicts), ""]
    notes = [line for w in workloads for line in _notes(w.name, by_workload.get(w.name, []))]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return "\n".join(lines)
