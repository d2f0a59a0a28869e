"""Recovery from a real PostgreSQL restart while worker processes cycle leases.

    .venv/bin/python bench/db_restart.py [--workers 4] [--before-s 3] [--after-s 6] [--write]

Restarts the WHOLE server (`pg_ctlcluster --skip-systemctl-redirect <version> main restart`):
every other client of it is disconnected too, so run it alone. Each worker loops acquire -> renew
-> record_response -> release on a private schema and timestamps (CLOCK_MONOTONIC, shared by the
processes) every operation that succeeds and every failure the keystore retries. Reported:

- restart_s: how long the restart command took (until the server accepts connections again);
- outage_s: from the first failure any worker saw to the first operation that succeeded after it
  (what a client of the keystore lives through);
- recovered_after_restart_s: from the restart command returning to that first success;
- max_stall_s: the longest gap between two successful operations of one worker (over all workers);
- ops, errors that reached a worker (by type; KeystoreUnreachable after the ~12 s retry budget),
  and slots still occupied at the end (must be 0).

With --write the table is appended to docs/benchmarks.md."""

from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from keystore import Keystore, MasterKey, NoKeyAvailable  # noqa: E402
from keystore.db import create_keystore_engine, upgrade  # noqa: E402

PG_URL = os.environ.get(
    "KEYRELAY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
KEYS, SLOTS_PER_KEY = 3, 2


class _Failures(logging.Handler):
    """When the keystore retried a transient failure (its "retrying" warnings)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.at: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.at.append(time.monotonic())


def _worker(url: str, master_key: bytes, index: int, stop: Any, out: Any) -> None:
    failures = _Failures()
    logging.getLogger("keystore.db").addHandler(failures)
    ks = Keystore(create_keystore_engine(url, pool_size=2), MasterKey([master_key]))
    headers = {
        "anthropic-ratelimit-requests-limit": "100000",
        "anthropic-ratelimit-requests-remaining": "99999",
        "anthropic-ratelimit-requests-reset": (ks.now() + timedelta(hours=1)).isoformat(),
    }
    done: list[float] = []  # when each successful operation returned
    errors: Counter[str] = Counter()
    while not stop.is_set():
        try:
            lease = ks.acquire(provider="anthropic", holder=f"bench-{index}", ttl_s=60)
            done.append(time.monotonic())
            ks.renew(lease, ttl_s=60)
            done.append(time.monotonic())
            ks.record_response(lease.key_id, provider="anthropic", status=200, headers=headers)
            done.append(time.monotonic())
            ks.release(lease)
            done.append(time.monotonic())
        except NoKeyAvailable:
            time.sleep(0.005)
        except Exception as exc:
            errors[type(exc).__name__] += 1
            time.sleep(0.05)
    out.put((done, failures.at, dict(errors)))
    ks.close()


def _cluster() -> str:
    return sorted(os.listdir("/etc/postgresql"))[-1]


def run(workers: int, before_s: float, after_s: float) -> dict[str, Any]:
    schema = f"kr_bench_restart_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    engine = create_keystore_engine(url)
    upgrade(engine)
    master_key = Fernet.generate_key()
    setup = Keystore(engine, MasterKey([master_key]))
    for i in range(KEYS):
        setup.add_key(
            name=f"k{i}",
            provider="anthropic",
            secret=f"sk-ant-api03-bench-{i}-{uuid.uuid4().hex}",
            max_concurrency=SLOTS_PER_KEY,
        )
    ctx = mp.get_context("forkserver")
    stop, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(url, master_key, i, stop, out)) for i in range(workers)
    ]
    for p in procs:
        p.start()
    time.sleep(before_s)
    restart_at = time.monotonic()
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", _cluster(), "main", "restart"]
    subprocess.run(command, check=True, capture_output=True)
    restarted_at = time.monotonic()
    time.sleep(after_s)
    stop.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()

    done = sorted(t for d, _, _ in results for t in d)
    failed = sorted(t for _, f, _ in results for t in f if t >= restart_at)
    errors: Counter[str] = Counter()
    for _, _, e in results:
        errors.update(e)
    first_failure = failed[0] if failed else None
    first_success = next((t for t in done if first_failure and t > first_failure), None)
    stalls = [b - a for d, _, _ in results for a, b in itertools.pairwise(d)]
    setup.engine.dispose()  # its pooled connections died with the restart
    with setup.engine.connect() as conn:
        occupied = conn.execute(
            text("SELECT count(*) FROM lease_slots WHERE lease_id IS NOT NULL")
        ).scalar_one()
    setup.close()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
    return {
        "restart_s": restarted_at - restart_at,
        "outage_s": (first_success - first_failure) if first_success and first_failure else None,
        "recovered_after_restart_s": (first_success - restarted_at) if first_success else None,
        "max_stall_s": max(stalls, default=0.0),
        "ops": len(done),
        "retried_failures": len(failed),
        "errors": dict(errors) or "none",
        "occupied_after": occupied,
    }


def _table(result: dict[str, Any], workers: int, command: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    python = platform.python_version()
    rows = "\n".join(f"| {name} | {_fmt(value)} |" for name, value in result.items())
    return (
        f"\n### PostgreSQL restart under load, {when} ({os.cpu_count()} cores, Python {python}, "
        f"{workers} workers, load average {load:.1f} before the run)\n\n"
        f"`{command}`\n\n| measure | value |\n|---|---|\n{rows}\n"
    )


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--before-s", type=float, default=3.0)
    parser.add_argument("--after-s", type=float, default=6.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    result = run(args.workers, args.before_s, args.after_s)
    command = "python bench/db_restart.py " + " ".join(sys.argv[1:])
    table = _table(result, args.workers, command.strip())
    print(table)
    if args.write:
        with (ROOT / "docs" / "benchmarks.md").open("a") as docs:
            docs.write(table)


if __name__ == "__main__":
    main()
