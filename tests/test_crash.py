"""A holder killed with SIGKILL frees its slot at the lease's expiry; a renewing holder keeps it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from keystore import Keystore, MasterKey, NoKeyAvailable, utcnow
from keystore.db import create_keystore_engine

ROOT = Path(__file__).resolve().parents[1]
TTL_S = 1.5
HOLDER = """
import sys, time
from keystore import Keystore, MasterKey
from keystore.db import create_keystore_engine
ks = Keystore(create_keystore_engine(sys.argv[1]), MasterKey([sys.argv[2].encode()]))
with ks.lease(provider="openai", holder="doomed-holder", ttl_s=float(sys.argv[3])) as lease:
    print(lease.id, flush=True)
    time.sleep(3600)
"""


def _try_acquire(ks: Keystore) -> bool:
    try:
        ks.release(ks.acquire(provider="openai", holder="survivor", ttl_s=30))
        return True
    except NoKeyAvailable:
        return False


@pytest.mark.slow
def test_killed_holder_frees_slot_at_ttl_and_renewal_keeps_it(store_url: str) -> None:
    master_key = Fernet.generate_key()
    ks = Keystore(create_keystore_engine(store_url), MasterKey([master_key]))
    ks.add_key(name="only", provider="openai", secret="sk-proj-" + "k" * 40)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, store_url, master_key.decode(), str(TTL_S)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        lease_id = child.stdout.readline().strip()  # type: ignore[union-attr]
        assert lease_id
        # Renewal: three TTLs later the lease is still held.
        deadline = time.monotonic() + 3 * TTL_S
        while time.monotonic() < deadline:
            assert not _try_acquire(ks), "a renewed lease must not expire"
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        killed_at = utcnow()
        assert ks.get_key(1).active_leases == 1  # the dead holder's lease runs until expiry
        while not _try_acquire(ks):
            time.sleep(0.05)
            assert (utcnow() - killed_at).total_seconds() < TTL_S + 10, "slot never freed"
        reclaimed = ks.audit_events(type="lease_reclaimed")
        assert [(e.details["lease_id"], e.details["holder"]) for e in reclaimed] == [
            (lease_id, "doomed-holder")
        ]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        ks.close()
