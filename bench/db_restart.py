"""Recovery from a real PostgreSQL restart (or stop, outage, start) while workers cycle leases.

    .venv/bin/python bench/db_restart.py [--workers 4] [--before-s 3] [--after-s 6]
        [--down-s 0] [--write]

Restarts the WHOLE server (`pg_ctlcluster --skip-systemctl-redirect <version> main restart`, or
with --down-s N `stop`, N seconds, `start`): every other client of it is disconnected too, so run
it alone. Each worker loops acquire -> renew -> record_response -> release on a private schema and
timestamps (CLOCK_MONOTONIC, shared by the processes) every operation that succeeds and every
failure the keystore retries. Reported:

- command_s: how long pg_ctlcluster took (restart; or stop + outage + start);
- recovery_s: from the first failure any worker saw until every worker that saw one had an
  operation succeed again (what the pool lives through);
- back_after_start_s (--down-s only): from `start` being issued until every worker is back (the
  retry waits are capped at 2 s so this stays short however long the outage was);
- max_stall_s: the longest gap between two successful operations of one worker (over all workers);
- ops, failures retried, errors that reached a worker (by type; KeystoreUnreachable after the
  ~12 s retry budget), and slots still occupied at the end (must be 0).

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


def _worker(url: str, master_key: bytes, index: int, ready: Any, stop: Any, out: Any) -> None:
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
            if len(done) == 4:  # a first full cycle: this worker is under way
                with ready.get_lock():
                    ready.value += 1
        except NoKeyAvailable:
            time.sleep(0.005)
        except Exception as exc:
            errors[type(exc).__name__] += 1
            time.sleep(0.05)
    out.put((done, failures.at, dict(errors)))
    ks.close()


def _cluster() -> str:
    return sorted(os.listdir("/etc/postgresql"))[-1]


def run(workers: int, before_s: float, after_s: float, down_s: float) -> dict[str, Any]:
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
    ready, stop, out = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(url, master_key, i, ready, stop, out))
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    while ready.value < workers:  # starting a process takes seconds on a loaded machine
        time.sleep(0.05)
    time.sleep(before_s)
    restart_at = time.monotonic()
    pg_ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", _cluster(), "main"]
    start_at = None
    if down_s > 0:
        subprocess.run([*pg_ctl, "stop"], check=True, capture_output=True)
        time.sleep(down_s)
        start_at = time.monotonic()
        subprocess.run([*pg_ctl, "start"], check=True, capture_output=True)
    else:
        subprocess.run([*pg_ctl, "restart"], check=True, capture_output=True)
    command_s = time.monotonic() - restart_at
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
    # per worker that saw the server go: its first failure, and its first success after it
    gone_back = [
        (fails[0], next((t for t in d if t > fails[0]), None))
        for d, f, _ in results
        if (fails := [t for t in f if t >= restart_at])
    ]
    back = [b for _, b in gone_back]
    all_back = max(back) if back and None not in back else None  # type: ignore[type-var]
    stalls = [b - a for d, _, _ in results for a, b in itertools.pairwise(d)]
    setup.engine.dispose()  # its pooled connections died with the restart
    with setup.engine.connect() as conn:
        occupied = conn.execute(
            text("SELECT count(*) FROM lease_slots WHERE lease_id IS NOT NULL")
        ).scalar_one()
    setup.close()
    admin.dispose()  # likewise
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
    return {
        "command_s": command_s,
        "recovery_s": all_back - min(f for f, _ in gone_back) if all_back else None,
        "back_after_start_s": all_back - start_at if all_back and start_at else None,
        "max_stall_s": max(stalls, default=0.0),
        "ops": len(done),
        "retried_failures": len(failed),
        "errors": dict(errors) or "none",
        "occupied_after": occupied,
    }


def _table(result: dict[str, Any], workers: int, down_s: float, command: str) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    what = f"stopped for {down_s:g} s" if down_s else "restart"
    rows = "\n".join(f"| {name} | {_fmt(value)} |" for name, value in result.items())
    return (
        f"\n### PostgreSQL {what} under load, {when} ({os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {workers} workers, load average {os.getloadavg()[0]:.1f} "
        f"after the run)\n\n`{command}`\n\n| measure | value |\n|---|---|\n{rows}\n"
    )


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--before-s", type=float, default=3.0)
    parser.add_argument("--after-s", type=float, default=6.0)
    parser.add_argument("--down-s", type=float, default=0.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    result = run(args.workers, args.before_s, args.after_s, args.down_s)
    command = "python bench/db_restart.py " + " ".join(sys.argv[1:])
    table = _table(result, args.workers, args.down_s, command.strip())
    print(table)
    if args.write:
        with (ROOT / "docs" / "benchmarks.md").open("a") as docs:
            docs.write(table)


if __name__ == "__main__":
    main()
