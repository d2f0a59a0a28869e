"""The markdown section for docs/benchmarks.md: per workload a table (every cell the median and,
in brackets, the range over the repeats) and its plot, then the targets."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime

from bench.goodput.summary import Spread, Summary
from bench.goodput.systems import SYSTEMS
from bench.goodput.targets import Verdict
from bench.goodput.workloads import Workload

__all__ = ["RunInfo", "render"]

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
    plots: dict[str, str]  # workload -> path relative to docs/


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


def _notes(summaries: list[Summary]) -> list[str]:
    lines = []
    for summary in summaries:
        if summary.orchestrator_cpu_ms_per_call is not None:
            lines.append(
                f"- `{summary.system}` on `{summary.workload}`: the Prefect server used "
                f"{_cell(summary.orchestrator_cpu_ms_per_call, 1)} ms of CPU per finished call "
                "besides the client's."
            )
        for error in summary.errors:
            lines.append(f"- `{summary.system}` on `{summary.workload}`: {error}")
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
) -> str:
    paths = sorted({s.keystore_path for s in summaries.values() if s.keystore_path})
    lines = [
        f"### Goodput against an oracle, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
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
        "after each answer. Keystore calls used: "
        f"{', '.join(paths) or '-'}.",
        "",
    ]
    by_workload: dict[str, list[Summary]] = {}
    for (workload_name, _system), summary in summaries.items():
        by_workload.setdefault(workload_name, []).append(summary)
    order = {name: i for i, name in enumerate(SYSTEMS)}
    for workload in workloads:
        rows = sorted(by_workload.get(workload.name, []), key=lambda s: order[s.system])
        lines += _workload_section(workload, rows, info.plots.get(workload.name))
    if verdicts:
        lines += ["#### keyrelay against the targets", "", *_targets(verdicts), ""]
    notes = _notes([s for w in workloads for s in by_workload.get(w.name, [])])
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return "\n".join(lines)
