"""Keystore.reclaim_leases_of: a crashed run starting again frees its own leases at once instead of
waiting for their TTL, and only its own."""

from __future__ import annotations

import pytest

from keystore import InvalidInput, Keystore, ManualClock, NoKeyAvailable
from tests.conftest import secret_for

RUN = "0f6e2a54-3d2b-4c1e-9d8a-1b2c3d4e5f60"


def test_frees_the_dead_holders_leases_and_records_them(ks: Keystore, clock: ManualClock) -> None:
    key = ks.add_key(name="only", provider="anthropic", secret=secret_for("only"))
    other = ks.add_key(
        name="other", provider="anthropic", secret=secret_for("other"), max_concurrency=2
    )
    dead = ks.acquire(provider="anthropic", holder=f"flow-run {RUN} turn 2", ttl_s=300)
    # a run whose id starts like this one's, and one with a `%` that LIKE must not expand
    alive = ks.acquire(provider="anthropic", holder=f"flow-run {RUN}0 turn 1", ttl_s=300)
    percent = ks.acquire(provider="anthropic", holder="flow-run % turn 1", ttl_s=300)
    assert {dead.key_id, alive.key_id, percent.key_id} == {key.id, other.id}
    with pytest.raises(NoKeyAvailable):
        ks.acquire(provider="anthropic", holder="someone", ttl_s=300)

    assert ks.reclaim_leases_of(f"flow-run {RUN} ") == 1

    holders = {lease.holder for lease in ks.active_leases()}
    assert holders == {f"flow-run {RUN}0 turn 1", "flow-run % turn 1"}
    (row,) = ks.audit_events(type="lease_reclaimed")
    assert row.key_id == dead.key_id
    assert row.details == {
        "lease_id": dead.id,
        "holder": f"flow-run {RUN} turn 2",
        "reason": "its holder restarted",
    }
    # the slot is free long before the dead lease's expiry
    clock.advance(1)
    assert ks.acquire(provider="anthropic", holder="next", ttl_s=300).key_id == dead.key_id
    # the dead holder cannot renew what it lost
    assert not ks.release(dead)


def test_an_expired_unreleased_lease_is_freed_too(ks: Keystore, clock: ManualClock) -> None:
    ks.add_key(name="k", provider="openai", secret=secret_for("k"))
    ks.acquire(provider="openai", holder=f"flow-run {RUN} turn 1", ttl_s=10)
    clock.advance(60)
    assert ks.reclaim_leases_of(f"flow-run {RUN} ") == 1
    assert ks.reclaim_leases_of(f"flow-run {RUN} ") == 0  # nothing left: no second row
    assert len(ks.audit_events(type="lease_reclaimed")) == 1


def test_refuses_an_empty_prefix(ks: Keystore) -> None:
    with pytest.raises(InvalidInput):
        ks.reclaim_leases_of(" ")
