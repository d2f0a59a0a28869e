"""One PNG per workload: calls completed over time by each system (its median-makespan repeat),
against the quota line (the most calls the limits can admit by then) and the lower bound."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.goodput.runner import RunResult
from bench.goodput.workloads import Workload

__all__ = ["plot_workload"]


def _median_run(runs: list[RunResult]) -> RunResult:
    middle = statistics.median_low(r.makespan_s for r in runs)
    return next(r for r in runs if r.makespan_s == middle)


def plot_workload(workload: Workload, results: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_system: dict[str, list[RunResult]] = {}
    for result in results:
        if result.workload == workload.name:
            by_system.setdefault(result.system, []).append(result)
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=110)
    end = max(r.makespan_s for runs in by_system.values() for r in runs) * 1.05
    grid = [end * i / 400 for i in range(401)]
    axes.plot(
        grid,
        [workload.admitted_by(t) for t in grid],
        color="0.6",
        linestyle="--",
        drawstyle="steps-post",
        label="quota (most calls the limits admit)",
    )
    axes.axvline(workload.lower_bound_s(), color="0.6", linestyle=":", label="lower bound")
    for system, runs in by_system.items():
        run = _median_run(runs)
        times = [0.0, *run.served_at_s]
        axes.plot(times, range(len(times)), drawstyle="steps-post", label=f"{system}")
    axes.set_xlim(0, end)
    axes.set_ylim(0, workload.calls * 1.05)
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("calls completed")
    axes.set_title(workload.title, fontsize=10)
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
