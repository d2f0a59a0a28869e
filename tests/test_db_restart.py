"""Processes cycling leases while every PostgreSQL connection they have is killed, three times.

Each worker acquires, renews, records a response and an audit row, and releases, CYCLES times.
Meanwhile the test terminates every backend the workers have (`pg_terminate_backend`, which sends
them what a server restart sends: 57P01, then a closed socket), so statements fail mid-flight and
pooled connections turn out dead. The connections are found by an application_name private to the
test, so nothing else using the server is disturbed (bench/db_restart.py restarts the real server).

An API in the test's process answers GET /keys/status throughout, on connections killed too.

Afterwards: every API request was answered 200, every worker finished every cycle without an
error reaching it, no slot is still occupied, no key held more leases than its cap, every cycle
left its audit row (and at most one more per retry the worker logged: a retried write whose first
commit did land), and the audit chain verifies (no half-written rows)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from api.app import create_app
from keystore import Keystore, MasterKey, NoKeyAvailable
from keystore.db import create_keystore_engine
from tests.conftest import PG_URL
from tests.held_intervals import Held, max_overlap, parse_held
from tests.test_api_support import AUTH, api_settings

PROCESSES = 4
CYCLES = 120
KILLS = 3
CAPS = {"one": 1, "two": 2, "three": 3}  # 6 slots for 4 workers: nobody waits long


class _RetryCount(logging.Handler):
    """Counts the keystore's "retrying" warnings: each is one transient failure it absorbed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "retrying" in record.getMessage()


def _worker(url: str, master_key: bytes, index: int, progress: Any, out: str) -> None:
    retries = _RetryCount()
    logging.getLogger("keystore.db").addHandler(retries)
    ks = Keystore(create_keystore_engine(url, pool_size=2), MasterKey([master_key]))
    held: list[Held] = []
    errors: list[str] = []
    not_held = 0
    reset = (ks.now() + timedelta(minutes=1)).isoformat()
    headers = {
        "anthropic-ratelimit-requests-limit": "1000",
        "anthropic-ratelimit-requests-remaining": "900",
        "anthropic-ratelimit-requests-reset": reset,
    }
    for _ in range(CYCLES):
        try:
            while True:
                try:
                    lease = ks.acquire(provider="anthropic", holder=f"w{index}", ttl_s=60)
                    break
                except NoKeyAvailable:
                    time.sleep(0.001)
            start = time.monotonic()
            ks.renew(lease, ttl_s=60)
            ks.record_response(lease.key_id, provider="anthropic", status=200, headers=headers)
            ks.record("key_rotated", key_id=lease.key_id, run_id=f"w{index}")
            end = time.monotonic()
            not_held += not ks.release(lease)
            held.append(Held(lease.key_id, start, end))
        except Exception as exc:  # the test's point: none may reach the caller
            errors.append(type(exc).__name__)
        with progress.get_lock():
            progress.value += 1
    summary = f"{len(held)} {not_held} {retries.count} {','.join(errors) or '-'}"
    Path(out).write_text(summary + "\n" + "\n".join(h.line() for h in held) + "\n")
    ks.close()


def _terminate(tag: str) -> int:
    """Kill every backend of the test's connections (application_name `tag`)."""
    admin = create_engine(PG_URL)
    with admin.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :tag"
            ),
            {"tag": tag},
        ).scalar_one()
    admin.dispose()
    return int(killed)


@pytest.mark.slow
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_lease_cycles_survive_killed_connections(store_url: str, tmp_path: Path) -> None:
    tag = f"keyrelay-restart-{uuid.uuid4().hex[:8]}"
    url = make_url(store_url).update_query_dict({"application_name": tag})
    url_text = url.render_as_string(hide_password=False)
    master_key = Fernet.generate_key()
    setup = Keystore(create_keystore_engine(store_url), MasterKey([master_key]))
    cap_of = {
        setup.add_key(
            name=name,
            provider="anthropic",
            secret=f"sk-ant-api03-{name}-" + "x" * 30,
            max_concurrency=cap,
        ).id: cap
        for name, cap in CAPS.items()
    }
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["keystore", "tests.test_db_restart"])
    progress = ctx.Value("i", 0)
    outs = [str(tmp_path / f"w{i}.txt") for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=_worker, args=(url_text, master_key, i, progress, outs[i]))
        for i in range(PROCESSES)
    ]
    api_store = Keystore(create_keystore_engine(url_text), MasterKey([master_key]))
    api = TestClient(create_app(api_settings(tmp_path), api_store), headers=AUTH)
    statuses: Counter[int] = Counter()
    running = threading.Event()
    running.set()

    def poll_api() -> None:  # the API is busy too: its connections are killed with the others
        while running.is_set():
            statuses[api.get("/keys/status").status_code] += 1

    poller = threading.Thread(target=poll_api)
    for p in procs:
        p.start()
    poller.start()
    killed = []
    for k in range(1, KILLS + 1):  # a quarter, half and three quarters of the way through
        while progress.value < PROCESSES * CYCLES * k // (KILLS + 1):
            time.sleep(0.01)
        killed.append(_terminate(tag))
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0, f"worker exited with {p.exitcode}"
    running.clear()
    poller.join()
    api_store.close()
    assert statuses[200] > 0 and set(statuses) == {200}, statuses

    spans: dict[int, list[tuple[float, float]]] = {k: [] for k in cap_of}
    retried = 0
    for i, out in enumerate(outs):
        head, *rows = Path(out).read_text().splitlines()
        done, not_held, retries, errors = head.split()
        assert errors == "-", f"worker {i} saw {errors}"
        assert int(done) == CYCLES
        assert int(not_held) == 0  # no lease was taken from a live holder
        retried += int(retries)
        for row in rows:
            h = parse_held(row)
            spans[h.key_id].append((h.start, h.end))
        rotated = setup.audit_events(limit=10_000, run_id=f"w{i}", type="key_rotated")
        assert CYCLES <= len(rotated) <= CYCLES + int(retries)

    assert all(killed), f"backends killed per round: {killed}"
    assert retried > 0  # the kills did reach statements in flight or pooled connections
    for key_id, cap in cap_of.items():
        assert max_overlap(spans[key_id]) <= cap, f"key {key_id} over its cap {cap}"
    assert setup.active_leases() == []
    with setup.engine.connect() as conn:
        occupied = conn.execute(text("SELECT count(*) FROM lease_slots WHERE lease_id IS NOT NULL"))
        assert occupied.scalar_one() == 0
    assert setup.verify_audit().ok
    setup.close()
