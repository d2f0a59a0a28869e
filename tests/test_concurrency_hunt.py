"""Many processes doing everything at once to one pool (PostgreSQL and SQLite), and what must hold.

Six processes: three lease workers (acquire, renew, record a response, release; every fifth
lease is "forgotten": a short TTL and no release, so it expires and is reclaimed); a cap changer
(max_concurrency of the anthropic keys between 1 and 3, the short-lived ones too while they are
being deleted, and RotationConfig changes); a toggler (disables and enables anthropic keys) and a
deleter (adds short-lived anthropic keys and deletes them while leases are out on them), these two
also racing each other every round to disable / delete the last two enabled openai keys.

Every process logs what it did with CLOCK_MONOTONIC times (shared by the processes), and the test
checks afterwards, with no false alarms (each condition names moments the log proves):

- no lease granted over the cap: for each lease, the leases certainly held during its whole
  acquire call (tests/held_intervals.py), plus itself, never exceed the highest cap the key had
  at any moment of that call. A cap lowered below the holders is not a violation; a NEW lease
  while the key is at or over the cap is;
- no lease granted on a key whose deletion had committed, nor on a key disabled for the whole
  acquire call;
- no lease lost while its key existed (renew and release of every unforgotten lease succeed);
- never zero enabled keys of a provider: of each pair of racing requests to the HTTP API at most
  one wins (the other is a 409), and the main process samples the database while they run;
- no lease row on a deleted key, and no occupied slot left once the forgotten leases expire."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.app import create_app
from keystore import KeyNotFound, Keystore, LastEnabledKey, LeaseLost, MasterKey, NoKeyAvailable
from keystore.db import create_keystore_engine
from tests.held_intervals import Held
from tests.test_api_support import AUTH, api_settings

LEASE_WORKERS = 3
LEASES_PER_WORKER = 150  # granted leases each lease worker takes
GIVE_UP_S = 60  # ... unless the pool starves it this long (the count below then fails)
RACE_ROUNDS = 15
CAPS = {"a1": 1, "a2": 2, "a3": 2, "a4": 3}  # the anthropic keys the cap changer moves
FORGET_TTL_S = 0.4
TEMP_CAP = 2

_SAMPLE = text(
    """
    SELECT
      (SELECT count(*) FROM (SELECT provider FROM keys GROUP BY provider
         HAVING count(*) FILTER (WHERE enabled) = 0) none_enabled),
      (SELECT count(*) FROM lease_slots s WHERE s.lease_id IS NOT NULL
         AND NOT EXISTS (SELECT 1 FROM keys k WHERE k.id = s.key_id))
    """
)


class _Log:
    """One process's record of what it did, one line per event, written when it ends."""

    def __init__(self, path: str) -> None:
        self.path, self.lines = path, list[str]()

    def __call__(self, *fields: object) -> None:
        self.lines.append(" ".join(repr(f) if isinstance(f, float) else str(f) for f in fields))

    def close(self) -> None:
        Path(self.path).write_text("\n".join(self.lines) + "\n")


def _open(url: str, master_key: bytes) -> Keystore:
    return Keystore(create_keystore_engine(url, pool_size=2), MasterKey([master_key]))


def _lease_worker(url: str, master_key: bytes, index: int, stop: Any, out: str) -> None:
    ks, log, rng = _open(url, master_key), _Log(out), random.Random(index)
    headers = {  # what the provider said about the call made on the lease
        "anthropic-ratelimit-requests-limit": "100000",
        "anthropic-ratelimit-requests-remaining": "99999",
        "anthropic-ratelimit-requests-reset": (ks.now() + timedelta(hours=1)).isoformat(),
    }
    n, give_up_at = 0, time.monotonic() + GIVE_UP_S
    while n < LEASES_PER_WORKER and time.monotonic() < give_up_at:
        forget = n % 5 == 4
        called = time.monotonic()
        try:
            lease = ks.acquire(
                provider="anthropic",
                holder=f"w{index}",
                ttl_s=FORGET_TTL_S if forget else (None if n % 2 else 30),
            )
        except NoKeyAvailable:  # every slot held (forgotten leases for up to FORGET_TTL_S)
            time.sleep(0.002)
            continue
        n += 1
        start = time.monotonic()
        if forget:  # held, as far as anyone can tell, until it expires
            left_s = (lease.expires_at - ks.now()).total_seconds()
            log("L", lease.key_id, called, start, start + left_s - 0.05)
            continue
        time.sleep(rng.uniform(0, 0.01))
        try:
            ks.renew(lease, ttl_s=30)
            with contextlib.suppress(KeyNotFound):  # a short-lived key deleted meanwhile
                ks.record_response(lease.key_id, provider="anthropic", status=200, headers=headers)
            end = time.monotonic()
            held = ks.release(lease)
        except LeaseLost:
            end, held = time.monotonic(), False
        log("L", lease.key_id, called, start, end)
        if not held:  # when the loss was known: a delete may have run while release waited
            log("LOST", lease.key_id, time.monotonic())
    stop.set()
    log.close()
    ks.close()


def _cap_changer(url: str, master_key: bytes, ids: dict[str, int], stop: Any, out: str) -> None:
    ks, log, rng = _open(url, master_key), _Log(out), random.Random(7)
    caps = {ids[name]: cap for name, cap in CAPS.items()}
    while not stop.is_set():
        key_id = rng.choice(list(caps))
        new = rng.randint(1, 3)
        t0 = time.monotonic()
        ks.update_key(key_id, max_concurrency=new)
        log("C", key_id, t0, time.monotonic(), caps[key_id], new)
        caps[key_id] = new
        ks.update_config(lease_ttl_s=rng.choice([30, 60]), proactive_threshold=rng.choice([0.5, 1]))
        temps = [k for k in ks.list_keys("anthropic") if k.name.startswith("t")]
        if temps:  # a short-lived key, maybe being deleted right now
            temp, new = rng.choice(temps), rng.randint(1, 3)
            t0 = time.monotonic()
            try:
                ks.update_key(temp.id, max_concurrency=new)
            except KeyNotFound:
                continue
            log("C", temp.id, t0, time.monotonic(), temp.max_concurrency, new)
        time.sleep(rng.uniform(0, 0.02))
    log.close()
    ks.close()


def _api(ks: Keystore, home: str) -> TestClient:
    """The HTTP API over this process's keystore: the races go through it, as a user's would."""
    return TestClient(create_app(api_settings(Path(home)), ks), headers=AUTH)


RACE_OUTCOME = {200: "won", 204: "won", 409: "refused"}  # anything else is a failure


def _toggler(
    url: str, master_key: bytes, ids: dict[str, int], stop: Any, race: Any, out: str
) -> None:
    """Disables and enables anthropic keys; in each race round disables one of the last two
    enabled openai keys (PATCH /keys/{id}) while the deleter deletes the other."""
    ks, log, rng = _open(url, master_key), _Log(out), random.Random(11)
    api = _api(ks, str(Path(out).parent / "toggler"))
    anthropic = [ids[name] for name in CAPS]
    for round_ in range(RACE_ROUNDS):
        enabled = [k for k in ks.list_keys("openai") if k.enabled]
        while len(enabled) < 2:
            ks.add_key(name=f"o{round_}-{len(enabled)}", provider="openai", secret=_secret("o"))
            enabled = [k for k in ks.list_keys("openai") if k.enabled]
        for extra in enabled[2:]:
            ks.update_key(extra.id, enabled=False)
        race.wait()
        mine = enabled[0].id
        race.wait()  # the deleter read the same pair
        status = api.patch(f"/keys/{mine}", json={"enabled": False}).status_code
        log("RACE", round_, RACE_OUTCOME.get(status, f"status-{status}"))
        race.wait()
        for _ in range(5):  # between rounds: anthropic keys off and on again
            key_id = rng.choice(anthropic)
            t0 = time.monotonic()
            try:
                ks.update_key(key_id, enabled=False)
            except LastEnabledKey:
                continue
            t1 = time.monotonic()
            time.sleep(rng.uniform(0, 0.02))
            t2 = time.monotonic()
            ks.update_key(key_id, enabled=True)
            log("OFF", key_id, t0, t1, t2, time.monotonic())
    while not stop.is_set():
        time.sleep(0.01)
    log.close()
    ks.close()


def _deleter(url: str, master_key: bytes, stop: Any, race: Any, out: str) -> None:
    """Adds anthropic keys and deletes them while leases are out on them; in each race round
    deletes one of the last two enabled openai keys (DELETE /keys/{id}) while the toggler
    disables the other."""
    ks, log, rng = _open(url, master_key), _Log(out), random.Random(13)
    api = _api(ks, str(Path(out).parent / "deleter"))
    for round_ in range(RACE_ROUNDS):
        race.wait()
        enabled = [k.id for k in ks.list_keys("openai") if k.enabled]
        race.wait()
        status = api.delete(f"/keys/{enabled[1]}").status_code
        log("RACE", round_, RACE_OUTCOME.get(status, f"status-{status}"))
        race.wait()
        for _ in range(2):
            temp = ks.add_key(
                name=f"t{uuid.uuid4().hex[:6]}",
                provider="anthropic",
                secret=_secret("t"),
                max_concurrency=TEMP_CAP,
                priority=rng.choice([50, 150]),
            )
            log("ADD", temp.id, time.monotonic())
            time.sleep(rng.uniform(0.01, 0.05))
            t0 = time.monotonic()
            try:
                ks.delete_key(temp.id)
            except KeyNotFound:
                continue
            log("DEL", temp.id, t0, time.monotonic())
    while not stop.is_set():
        time.sleep(0.01)
    log.close()
    ks.close()


def _secret(tag: str) -> str:
    return f"sk-{tag}-{uuid.uuid4().hex}{uuid.uuid4().hex}"


@dataclass(frozen=True)
class _Lease:
    called: float
    held: Held


def _read(outs: list[str]) -> dict[str, list[list[str]]]:
    events: dict[str, list[list[str]]] = defaultdict(list)
    for out in outs:
        for line in Path(out).read_text().splitlines():
            if line:
                kind, *fields = line.split()
                events[kind].append(fields)
    return events


def _cap_during(
    changes: list[tuple[float, float, int, int]], first: int, a: float, b: float
) -> int:
    """The highest cap a key may have had at any moment of [a, b] (a change counts with both its
    old and new value while it was in flight)."""
    cap = first
    for t0, t1, _old, new in changes:
        if t1 <= a:
            cap = new
    highest = cap
    for t0, t1, old, new in changes:
        if t0 <= b and t1 > a:
            highest = max(highest, old, new)
    return highest


@pytest.mark.slow
@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
def test_the_pool_keeps_its_invariants_under_everything_at_once(
    store_url: str, tmp_path: Path
) -> None:
    master_key = Fernet.generate_key()
    setup = Keystore(create_keystore_engine(store_url), MasterKey([master_key]))
    ids = {
        name: setup.add_key(
            name=name, provider="anthropic", secret=_secret(name), max_concurrency=cap
        ).id
        for name, cap in CAPS.items()
    }
    for i in range(2):
        setup.add_key(name=f"openai-{i}", provider="openai", secret=_secret("o"))

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["keystore", "api.app", "tests.test_concurrency_hunt"])
    stop, race = ctx.Event(), ctx.Barrier(2, timeout=GIVE_UP_S)  # a dead partner: broken
    outs = [str(tmp_path / f"p{i}.txt") for i in range(LEASE_WORKERS + 3)]
    args = [(store_url, master_key, i, stop, outs[i]) for i in range(LEASE_WORKERS)]
    procs = [ctx.Process(target=_lease_worker, args=a) for a in args]
    procs.append(
        ctx.Process(target=_cap_changer, args=(store_url, master_key, ids, stop, outs[-3]))
    )
    procs.append(
        ctx.Process(target=_toggler, args=(store_url, master_key, ids, stop, race, outs[-2]))
    )
    procs.append(ctx.Process(target=_deleter, args=(store_url, master_key, stop, race, outs[-1])))
    for p in procs:
        p.start()

    samples, bad_samples = 0, []
    with setup.engine.connect() as conn:
        deadline = time.monotonic() + 3 * GIVE_UP_S  # a hung process fails, never stalls CI
        while any(p.is_alive() for p in procs):
            if time.monotonic() > deadline:
                hung = [p.name for p in procs if p.is_alive()]
                for p in procs:
                    p.kill()
                pytest.fail(f"still running after {3 * GIVE_UP_S} s: {hung}")
            none_enabled, orphans = conn.execute(_SAMPLE).one()
            conn.rollback()
            samples += 1
            if none_enabled or orphans:
                bad_samples.append((none_enabled, orphans))
            time.sleep(0.01)
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"
    assert samples > 10 and bad_samples == []

    events = _read(outs)
    leases = [
        _Lease(float(called), Held(int(k), float(s), float(e))) for k, called, s, e in events["L"]
    ]
    assert len(leases) == LEASE_WORKERS * LEASES_PER_WORKER  # none starved for GIVE_UP_S
    deleting = {int(k): float(t0) for k, t0, _t1 in events["DEL"]}  # delete called
    deleted = {int(k): float(t1) for k, _t0, t1 in events["DEL"]}  # delete committed
    added = {int(k): float(t) for k, t in events["ADD"]}
    changes: dict[int, list[tuple[float, float, int, int]]] = defaultdict(list)
    for k, t0, t1, old, new in events["C"]:
        changes[int(k)].append((float(t0), float(t1), int(old), int(new)))
    first_cap = {ids[name]: cap for name, cap in CAPS.items()} | dict.fromkeys(added, TEMP_CAP)

    problems = []
    by_key: dict[int, list[_Lease]] = defaultdict(list)
    for lease in leases:
        by_key[lease.held.key_id].append(lease)
    for key_id, held in by_key.items():
        for lease in held:
            a, b = lease.called, lease.held.start
            certain = [
                (other.held.start, other.held.end)
                for other in held
                if other is not lease and other.held.start <= a and other.held.end >= b
            ]
            cap = _cap_during(changes[key_id], first_cap[key_id], a, b)
            if len(certain) + 1 > cap:
                problems.append(
                    f"key {key_id}: lease granted over cap {cap} at {b} (acquire called at "
                    f"{a}); held throughout: {certain}; cap changes (t0, t1, old, new): "
                    f"{changes[key_id]}"
                )
            if key_id in deleted and a > deleted[key_id]:
                problems.append(f"key {key_id}: lease granted after the key was deleted")
    for off, _t0, t1, t2, _t3 in events["OFF"]:
        for lease in by_key[int(off)]:
            if lease.called > float(t1) and lease.held.start < float(t2):
                problems.append(f"key {off}: lease granted while it was disabled")
    for lost, at in events["LOST"]:
        gone = int(lost) in deleting and deleting[int(lost)] <= float(at)
        if not gone:
            problems.append(f"key {lost}: a held lease was lost while its key existed")
    assert problems == [], "\n".join(problems)

    won: dict[str, int] = defaultdict(int)
    for round_, outcome in events["RACE"]:
        assert outcome in ("won", "refused")  # never a 5xx, never a 404
        won[round_] += outcome == "won"
    assert len(won) == RACE_ROUNDS
    # exactly one of the last two enabled keys goes: never both, and never neither (a refusal
    # only when the other request had already taken the other key)
    assert all(n == 1 for n in won.values()), won

    time.sleep(FORGET_TTL_S)  # every forgotten lease has expired by now
    setup.reclaim_expired()
    with setup.engine.connect() as conn:
        occupied = conn.execute(text("SELECT count(*) FROM lease_slots WHERE lease_id IS NOT NULL"))
        assert occupied.scalar_one() == 0
    assert all(any(k.enabled for k in setup.list_keys(p)) for p in ("anthropic", "openai"))
    assert setup.verify_audit().ok
    setup.close()
