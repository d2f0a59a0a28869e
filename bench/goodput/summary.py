"""Repeats folded into min / median / max, and ratios against the oracle of the same repeat."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.goodput.runner import RunResult, percentile_ms

__all__ = ["Spread", "Summary", "summarize"]


@dataclass(frozen=True)
class Spread:
    low: float
    median: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(min(values), statistics.median(values), max(values))


@dataclass(frozen=True)
class Summary:
    system: str
    workload: str
    repeats: int
    makespan_s: Spread
    over_lower_bound: Spread
    over_oracle: Spread | None
    refusals: Spread
    over_limit: int  # summed over repeats: anything but 0 is an emulator bug
    jobs_failed: Spread
    cpu_ms_per_call: Spread
    added_p50_ms: Spread | None
    added_p99_ms: Spread | None
    bookkeeping_p50_ms: Spread | None
    orchestrator_cpu_ms_per_call: Spread | None
    keystore_path: str | None
    errors: list[str]


def _spread(runs: list[RunResult], value: Callable[[RunResult], float | None]) -> Spread | None:
    return Spread.of([v for run in runs if (v := value(run)) is not None])


def _always(runs: list[RunResult], value: Callable[[RunResult], float]) -> Spread:
    spread = Spread.of([value(run) for run in runs])
    assert spread is not None  # a group has at least one run
    return spread


def summarize(results: list[RunResult]) -> dict[tuple[str, str], Summary]:
    oracle = {(r.workload, r.repeat): r.makespan_s for r in results if r.system == "oracle"}
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.workload, result.system), []).append(result)
    summaries = {}
    for (workload, system), runs in groups.items():

        def vs_oracle(run: RunResult) -> float | None:
            anchor = oracle.get((run.workload, run.repeat))
            return run.makespan_s / anchor if anchor else None

        def orchestrator(run: RunResult) -> float | None:
            cpu = run.orchestrator_cpu_s
            return None if cpu is None else 1000 * cpu / max(1, run.calls_served)

        summaries[(workload, system)] = Summary(
            system=system,
            workload=workload,
            repeats=len(runs),
            makespan_s=_always(runs, lambda r: r.makespan_s),
            over_lower_bound=_always(runs, lambda r: r.makespan_s / r.lower_bound_s),
            over_oracle=_spread(runs, vs_oracle),
            refusals=_always(runs, lambda r: r.refusals),
            over_limit=sum(r.over_limit for r in runs),
            jobs_failed=_always(runs, lambda r: r.jobs_failed),
            cpu_ms_per_call=_always(runs, lambda r: r.cpu_ms_per_call),
            added_p50_ms=_spread(runs, lambda r: percentile_ms(r.added_s, 0.5)),
            added_p99_ms=_spread(runs, lambda r: percentile_ms(r.added_s, 0.99)),
            bookkeeping_p50_ms=_spread(runs, lambda r: percentile_ms(r.bookkeeping_s, 0.5)),
            orchestrator_cpu_ms_per_call=_spread(runs, orchestrator),
            keystore_path=runs[0].keystore_path,
            errors=sorted({e for r in runs for e in r.errors}),
        )
    return summaries
