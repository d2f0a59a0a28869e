"""Lease throughput of keyrelay's pool against Prefect's own global concurrency limits.

    .venv/bin/python bench/lease_vs_prefect.py [--seconds 5] [--clients 1 8 32]
        [--backends sqlite postgres prefect prefect-client] [--write]

The same shape for every backend: N client processes, each a loop of acquire -> release for
`--seconds` after a common start signal, none of them ever short of a slot (we measure the
mechanism, not the pool size). keyrelay: bench/lease_throughput.py's clients (8 keys x 8 slots,
`ks.acquire` / `ks.release`), SQLite or PostgreSQL. Prefect: a global concurrency limit of 64
slots created through the client, on a local `prefect server start` (its default SQLite
database, API only, one worker), taken either as its docs show,
`async with prefect.concurrency.asyncio.concurrency(NAME, occupy=1, strict=True)`, or with the
client's two calls underneath it (increment / release with lease: the floor of the former).
Processes, not asyncio tasks, for Prefect too: one process's tasks share one acquisition
service thread, which serializes them. Reported: cycles per second over all clients, p50/p99
of the acquire, and each against keyrelay on SQLite with as many clients in the same run.
--write appends the table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.goodput.prefect_server import prefect_server  # noqa: E402
from bench.lease_throughput import run as run_keyrelay  # noqa: E402

LIMIT_NAME = "keyrelay-bench"
SLOTS = 64  # as many as keyrelay's pool has (8 keys x 8)
Result = dict[str, float]


async def _create_limit() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=LIMIT_NAME, limit=SLOTS)
        )


async def _prefect_loop(backend: str, seconds: float, start: Event) -> list[float]:
    from prefect.client.orchestration import get_client
    from prefect.concurrency.asyncio import concurrency

    async with get_client() as client:

        async def by_context_manager() -> float:
            began = time.perf_counter()
            async with concurrency(LIMIT_NAME, occupy=1, strict=True):
                return time.perf_counter() - began

        async def by_client() -> float:
            began = time.perf_counter()
            granted = await client.increment_concurrency_slots_with_lease(
                names=[LIMIT_NAME], slots=1, mode="concurrency", lease_duration=300
            )
            took = time.perf_counter() - began
            await client.release_concurrency_slots_with_lease(lease_id=granted.json()["lease_id"])
            return took

        cycle = by_context_manager if backend == "prefect" else by_client
        await cycle()  # warm up: the client's connection, the acquisition service
        await asyncio.get_running_loop().run_in_executor(None, start.wait)
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            latencies.append(await cycle())
        return latencies


def _prefect_client(backend: str, seconds: float, start: Event, out: Queue[list[float]]) -> None:
    out.put(asyncio.run(_prefect_loop(backend, seconds, start)))


def run_prefect(backend: str, clients: int, seconds: float) -> Result:
    ctx = mp.get_context("forkserver")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_prefect_client, args=(backend, seconds, start, out))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    time.sleep(2.0 + clients * 0.1)  # every client has warmed up (its first acquire) by then
    start.set()
    latencies = sorted(x for _ in procs for x in out.get(timeout=seconds + 180))
    for p in procs:
        p.join()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {
        "cycles_per_s": len(latencies) / seconds,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
    }


BACKENDS = {
    "sqlite": "keyrelay pool, SQLite (`ks.acquire` / `ks.release`)",
    "postgres": "keyrelay pool, PostgreSQL",
    "prefect": "Prefect GCL, `async with concurrency(name, occupy=1)`",
    "prefect-client": "Prefect GCL, the client's increment/release-with-lease calls",
}


def _row(backend: str, clients: int, result: Result, anchor: Result | None) -> str:
    ratio = f"{result['cycles_per_s'] / anchor['cycles_per_s']:.3f}" if anchor else "-"
    return (
        f"| {BACKENDS[backend]} | {clients} | {result['cycles_per_s']:.0f} | "
        f"{result['p50_ms']:.2f} | {result['p99_ms']:.2f} | {ratio} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKENDS),
        choices=list(BACKENDS),
    )
    parser.add_argument("--write", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    with prefect_server() as server, tempfile.TemporaryDirectory() as tmp:
        # Before the first client: the fork server keeps this environment and these imports.
        os.environ["PREFECT_API_URL"] = server.api_url
        os.environ["PREFECT_HOME"] = str(server.home)
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        mp.set_forkserver_preload(
            ["keystore", "sqlalchemy", "psycopg", "prefect.concurrency.asyncio"]
        )
        asyncio.run(_create_limit())
        for clients in args.clients:
            measured: dict[str, Result] = {}
            for backend in args.backends:
                if backend.startswith("prefect"):
                    measured[backend] = run_prefect(backend, clients, args.seconds)
                else:
                    measured[backend] = run_keyrelay(backend, clients, args.seconds, Path(tmp))
                print(f"{clients:>3} clients, {backend:<14}: {measured[backend]}", flush=True)
            anchor = measured.get("sqlite")
            rows += [_row(b, clients, r, anchor) for b, r in measured.items()]
    table = "\n".join(
        [
            f"### Lease throughput against Prefect's global concurrency limits, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {args.seconds:g} s per cell, load average "
            f"{load_before:.1f} before)",
            "",
            "`.venv/bin/python bench/lease_vs_prefect.py --write`",
            "",
            "| backend | client processes | acquire+release / s | p50 acquire ms "
            "| p99 acquire ms | / keyrelay SQLite |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(table)
    if args.write:
        docs = ROOT / "docs" / "benchmarks.md"
        docs.write_text(docs.read_text().rstrip("\n") + "\n\n" + table)


if __name__ == "__main__":
    main()
