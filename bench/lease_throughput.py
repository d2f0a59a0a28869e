"""Lease throughput and acquire latency with 1, 8 and 32 client processes, SQLite and PostgreSQL.

    .venv/bin/python bench/lease_throughput.py [--seconds 5] [--clients 1 8 32]
        [--backends sqlite postgres] [--write]

Each client process loops acquire -> release on one shared pool (8 keys x max_concurrency 8, so the
pool itself never runs dry and we measure the keystore, not the pool size) for `--seconds` after a
common start signal. Reported: acquire+release cycles per second over all clients, and p50/p99 of
the acquire call. Results are appended as a table to docs/benchmarks.md with --write."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from keystore import Keystore, MasterKey, NoKeyAvailable  # noqa: E402
from keystore.db import create_keystore_engine, upgrade  # noqa: E402

PG_URL = os.environ.get(
    "KEYRELAY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
KEYS, SLOTS_PER_KEY = 8, 8


def _client(url: str, master_key: bytes, seconds: float, start: mp.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    ks = Keystore(create_keystore_engine(url, pool_size=1, max_overflow=1), MasterKey([master_key]))
    ks.config()
    latencies: list[float] = []
    misses = 0
    start.wait()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            lease = ks.acquire(provider="anthropic", holder="bench")
        except NoKeyAvailable:
            misses += 1
            continue
        latencies.append(time.perf_counter() - t0)
        ks.release(lease)
    out.put((latencies, misses))
    ks.close()


def _prepare(backend: str, workdir: Path) -> tuple[str, bytes, object]:
    if backend == "sqlite":
        url = f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:6]}.db'}"
        cleanup = None
    else:
        schema = f"kr_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = f"{PG_URL}?options=-csearch_path%3D{schema}"
        cleanup = (admin, schema)
    engine = create_keystore_engine(url)
    upgrade(engine)
    master_key = Fernet.generate_key()
    ks = Keystore(engine, MasterKey([master_key]))
    for i in range(KEYS):
        ks.add_key(
            name=f"k{i}",
            provider="anthropic",
            secret=f"sk-ant-api03-bench-{i}-{uuid.uuid4().hex}",
            max_concurrency=SLOTS_PER_KEY,
        )
    ks.close()
    return url, master_key, cleanup


def _drop(cleanup: object) -> None:
    if cleanup is None:
        return
    admin, schema = cleanup  # type: ignore[misc]
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def run(backend: str, clients: int, seconds: float, workdir: Path) -> dict[str, float]:
    url, master_key, cleanup = _prepare(backend, workdir)
    ctx = mp.get_context("forkserver")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(url, master_key, seconds, start, out))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    time.sleep(1.0 + clients * 0.05)  # let every client connect and warm up
    start.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    _drop(cleanup)
    latencies = sorted(x for lat, _ in results for x in lat)
    misses = sum(m for _, m in results)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {
        "cycles_per_s": len(latencies) / seconds,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "cycles": len(latencies),
        "misses": misses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument(
        "--write", action="store_true", help="append the table to docs/benchmarks.md"
    )
    args = parser.parse_args()
    mp.set_forkserver_preload(["keystore", "sqlalchemy", "psycopg"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            for clients in args.clients:
                r = run(backend, clients, args.seconds, Path(tmp))
                row = (
                    f"| {backend} | {clients} | {r['cycles_per_s']:.0f} | {r['p50_ms']:.2f} | "
                    f"{r['p99_ms']:.2f} | {r['misses']} |"
                )
                print(row, flush=True)
                rows.append(row)
    table = "\n".join(
        [
            f"### Lease throughput, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
            f"({os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{args.seconds:g} s per cell)",
            "",
            "`.venv/bin/python bench/lease_throughput.py --write`",
            "",
            "| backend | clients | acquire+release / s | p50 acquire ms | p99 acquire ms "
            "| NoKeyAvailable |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    if args.write:
        docs = ROOT / "docs" / "benchmarks.md"
        existing = docs.read_text() if docs.exists() else "# Benchmarks\n\n"
        docs.write_text(existing + "\n" + table)
    print(table)


if __name__ == "__main__":
    main()
