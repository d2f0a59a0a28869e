"""Many processes hammer one pool: no key ever holds more leases than its max_concurrency.

Each worker records, for every lease it held, the interval between `acquire` returning and
`release` being called (tests/held_intervals.py says why that has no false alarms). While holding,
each worker also counts the key's unexpired lease rows in the database itself."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from keystore import Keystore, MasterKey, NoKeyAvailable
from keystore.db import create_keystore_engine
from tests.held_intervals import max_overlap

PROCESSES = 8
CYCLES = int(os.environ.get("KEYRELAY_CONTENTION_CYCLES", "2000"))
CAPS = {"solo-1": 1, "solo-2": 1, "pair": 2, "trio": 3}  # 7 slots for 8 processes


def _worker(url: str, master_key: bytes, index: int, cycles: int, out: str) -> None:
    ks = Keystore(create_keystore_engine(url, pool_size=2), MasterKey([master_key]))
    count_sql = text(
        "SELECT count(*) FROM lease_slots WHERE key_id = :k AND lease_id IS NOT NULL "
        "AND expires_at > :now"
    )
    intervals, misses, lost = [], 0, 0
    done = 0
    while done < cycles:
        try:
            lease = ks.acquire(provider="anthropic", holder=f"worker-{index}", ttl_s=120)
        except NoKeyAvailable:
            misses += 1
            continue
        start = time.monotonic()
        with ks.engine.connect() as conn:
            in_db = conn.execute(count_sql, {"k": lease.key_id, "now": ks.now()}).scalar_one()
        end = time.monotonic()
        if not ks.release(lease):
            lost += 1
        intervals.append(f"{lease.key_id} {start!r} {end!r} {in_db}")
        done += 1
    Path(out).write_text(f"{misses} {lost} 0\n" + "\n".join(intervals) + "\n")
    ks.close()


@pytest.mark.slow
def test_cap_holds_across_processes(store_url: str, tmp_path: Path) -> None:
    master_key = Fernet.generate_key()
    setup = Keystore(create_keystore_engine(store_url), MasterKey([master_key]))
    ids = {
        name: setup.add_key(
            name=name,
            provider="anthropic",
            secret=f"sk-ant-api03-{name}-" + "x" * 30,
            max_concurrency=cap,
        ).id
        for name, cap in CAPS.items()
    }
    cap_of = {ids[name]: cap for name, cap in CAPS.items()}
    ctx = mp.get_context("forkserver")  # import once in the server, fork the workers from it
    ctx.set_forkserver_preload(["keystore", "tests.test_contention"])
    outs = [str(tmp_path / f"w{i}.txt") for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=_worker, args=(store_url, master_key, i, CYCLES, outs[i]))
        for i in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0, f"worker exited with {p.exitcode}"

    spans: dict[int, list[tuple[float, float]]] = {k: [] for k in cap_of}
    seen_in_db: dict[int, int] = {k: 0 for k in cap_of}
    total_lost = 0
    for out in outs:
        head, *rows = Path(out).read_text().split("\n")
        _misses, lost, _ = map(int, head.split())
        total_lost += lost
        body = [r for r in rows if r]
        assert len(body) == CYCLES  # every process got a key, CYCLES times
        for row in body:
            key_id, start, end, in_db = row.split()
            spans[int(key_id)].append((float(start), float(end)))
            seen_in_db[int(key_id)] = max(seen_in_db[int(key_id)], int(in_db))
    assert total_lost == 0  # no lease was taken over while its holder still had it
    for key_id, cap in cap_of.items():
        assert spans[key_id], f"key {key_id} never used"
        assert max_overlap(spans[key_id]) <= cap, f"key {key_id} exceeded its cap {cap}"
        assert 1 <= seen_in_db[key_id] <= cap
    # the pool was really contended: some key was seen at its full cap while held
    assert any(seen_in_db[k] == cap > 1 for k, cap in cap_of.items())
    uses = {k.id: k.uses for k in setup.list_keys()}
    assert sum(uses.values()) == PROCESSES * CYCLES
    assert setup.verify_audit().ok
    setup.close()


def test_overlap_checker_catches_a_violation() -> None:
    assert max_overlap([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert max_overlap([(0, 1), (1, 2)]) == 1
