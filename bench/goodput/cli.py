"""`python -m bench.goodput`: every system on every workload, repeats interleaved (the systems'
order rotates each repeat), then the tables, the plots and the targets.

    .venv/bin/python -m bench.goodput [--repeats 3] [--time-scale 0.5] [--systems ...]
        [--workloads ...] [--postgres] [--write]

`--write` appends the section to docs/benchmarks.md, saves the plots as
docs/goodput/<date>-<workload>.png and the raw runs as docs/goodput/<date>-runs.json;
`--render docs/goodput/<date>-runs.json [--write]` makes the section again from those runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from api.emulator import EmulatorConfig, serve_emulator
from bench.goodput.plot import plot_workload
from bench.goodput.prefect_server import prefect_server
from bench.goodput.report import RunInfo, render
from bench.goodput.runner import Runner, RunResult, percentile_ms
from bench.goodput.summary import summarize
from bench.goodput.systems import DEFAULT_SYSTEMS, SYSTEMS
from bench.goodput.targets import judge
from bench.goodput.workloads import Workload, build_workloads

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Imported once by the process that forks every client, so no run waits for them.
PRELOAD = ["bench.goodput.child", "bench.goodput.systems.oracle", "bench.goodput.systems.naive"]
PRELOAD_FOR = {
    "litellm-shuffle": ["litellm"],
    "litellm-usage-v2": ["litellm"],
    "keyrelay-pool": ["bench.goodput.systems.keyrelay_pool"],
    "keyrelay-pool-pg": ["bench.goodput.systems.keyrelay_pool", "psycopg"],
    "keyrelay-flows": ["flows.agent_run", "anthropic"],
}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.goodput", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--time-scale", type=float, default=0.5, help="window length factor (1: 10 s windows)"
    )
    parser.add_argument("--systems", nargs="+", choices=sorted(SYSTEMS), default=None)
    parser.add_argument("--workloads", nargs="+", default=None)
    parser.add_argument("--postgres", action="store_true", help="also keyrelay-pool-pg")
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--json", type=Path, default=None, help="also save the raw runs here")
    parser.add_argument(
        "--render", type=Path, default=None, help="no runs: the section from a saved runs file"
    )
    return parser.parse_args(argv)


def _progress(result: RunResult) -> None:
    added = percentile_ms(result.added_s, 0.5)
    print(
        f"  {result.workload:<13} {result.system:<17} repeat {result.repeat}: "
        f"{result.makespan_s:6.2f} s ({result.makespan_s / result.lower_bound_s:.3f} x bound), "
        f"{result.refusals:4d} 429s, {result.calls_served} served, "
        f"{result.jobs_failed} failed, {result.cpu_ms_per_call:5.1f} ms CPU/call"
        + (f", added p50 {added:.1f} ms" if added is not None else ""),
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    if args.render is not None:
        render_saved(args.render, write=args.write)
        return
    systems = list(args.systems or DEFAULT_SYSTEMS)
    if args.postgres and "keyrelay-pool-pg" not in systems:
        systems.append("keyrelay-pool-pg")
    all_workloads = build_workloads(args.time_scale)
    workloads = [all_workloads[name] for name in (args.workloads or all_workloads)]
    # The clients inherit this environment (and import LiteLLM and Prefect with it).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    results: list[RunResult] = []
    with ExitStack() as stack:
        prefect = None
        if any(s.startswith("keyrelay-flows") for s in systems):
            prefect = stack.enter_context(prefect_server())
            os.environ["PREFECT_API_URL"] = prefect.api_url
            os.environ["PREFECT_HOME"] = str(prefect.home)
        emulator = stack.enter_context(serve_emulator(EmulatorConfig(log_capacity=500_000)))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        preload = PRELOAD + [m for s in systems for m in PRELOAD_FOR.get(s, [])]
        runner = Runner(emulator, workdir=workdir, prefect=prefect, preload=preload)
        for repeat in range(args.repeats):
            order = systems[repeat % len(systems) :] + systems[: repeat % len(systems)]
            print(f"repeat {repeat + 1}/{args.repeats}: {', '.join(order)}", flush=True)
            for workload in workloads:
                for system in order:
                    results.append(runner.run(system, workload, repeat))
                    _progress(results[-1])
    elapsed_s = time.monotonic() - started
    _report(args, argv, workloads, results, elapsed_s=elapsed_s, load_before=load_before)


def _save_runs(info: RunInfo, results: list[RunResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {"info": dataclasses.asdict(info), "runs": [dataclasses.asdict(r) for r in results]}
    path.write_text(json.dumps(saved) + "\n")


def _load_runs(path: Path) -> tuple[RunInfo, list[RunResult]]:
    saved = json.loads(path.read_text())
    return RunInfo(**saved["info"]), [RunResult(**run) for run in saved["runs"]]


def _report(
    args: argparse.Namespace,
    argv: list[str] | None,
    workloads: list[Workload],
    results: list[RunResult],
    *,
    elapsed_s: float,
    load_before: float,
) -> None:
    now = datetime.now(UTC)
    given = argv if argv is not None else sys.argv[1:]
    info = RunInfo(
        command=shlex.join([".venv/bin/python", "-m", "bench.goodput", *given]),
        repeats=args.repeats,
        time_scale=args.time_scale,
        elapsed_s=elapsed_s,
        load_before=load_before,
        stamp=f"{now:%Y-%m-%d-%H%M}",
        finished_at=f"{now:%Y-%m-%d %H:%M} UTC",
        workloads=[w.name for w in workloads],
    )
    if args.write:
        _save_runs(info, results, DOCS / "goodput" / f"{info.stamp}-runs.json")
    if args.json is not None:
        _save_runs(info, results, args.json)
    _publish(info, results, write=args.write)


def _publish(info: RunInfo, results: list[RunResult], *, write: bool) -> None:
    """Print the section; with `write`, draw the plots and append the section to the docs."""
    every = build_workloads(info.time_scale)
    workloads = [every[name] for name in info.workloads]
    if write:
        for workload in workloads:
            plot_workload(workload, results, DOCS / info.plot(workload.name))
    summaries = summarize(results)
    section = render(info, workloads, summaries, judge(summaries), plots=write)
    print(section)
    if write:
        docs = DOCS / "benchmarks.md"
        docs.write_text(docs.read_text().rstrip("\n") + "\n\n" + section)


def render_saved(path: Path, *, write: bool) -> None:
    """The section (and with `write`, the plots) again from a saved run."""
    info, results = _load_runs(path)
    _publish(info, results, write=write)
