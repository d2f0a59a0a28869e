"""The pool: selection order, caps, TTL, renew, release, explain, NoKeyAvailable."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from keystore import (
    InvalidInput,
    Keystore,
    LeaseLost,
    ManualClock,
    MasterKey,
    NoKeyAvailable,
    RateLimitSignal,
)
from keystore.db import create_keystore_engine
from tests.conftest import T0, secret_for


def _add(ks: Keystore, name: str, provider: str = "anthropic", **kw: object) -> int:
    return ks.add_key(name=name, provider=provider, secret=secret_for(name), **kw).id  # type: ignore[arg-type]


def test_priority_then_least_recently_used_then_id(ks: Keystore, clock: ManualClock) -> None:
    low = _add(ks, "low", priority=200)
    a = _add(ks, "a", priority=10)
    b = _add(ks, "b", priority=10)
    picks = []
    for _ in range(4):
        lease = ks.acquire(provider="anthropic", holder="t")
        picks.append(lease.key_id)
        ks.release(lease)
        clock.advance(1)
    assert picks == [a, b, a, b]  # never-used first, then round robin by last use
    assert low not in picks


def test_keys_over_proactive_threshold_go_last(ks: Keystore) -> None:
    hot = _add(ks, "hot", priority=1)
    cool = _add(ks, "cool", priority=1)
    headers = {
        "anthropic-ratelimit-requests-limit": "100",
        "anthropic-ratelimit-requests-remaining": "3",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:01:00Z",
    }
    ks.record_response(hot, provider="anthropic", status=200, headers=headers)
    assert ks.explain("anthropic").chosen == cool
    first = ks.acquire(provider="anthropic", holder="t")
    second = ks.acquire(provider="anthropic", holder="t")
    assert (first.key_id, second.key_id) == (cool, hot)  # still used when nothing else is left
    ks.update_config(proactive_threshold=0.99)
    reasons = {c.id: c.reason for c in ks.explain("anthropic").candidates}
    assert "chosen last" not in reasons[hot]


def test_max_concurrency_is_a_hard_cap(ks: Keystore) -> None:
    k = _add(ks, "k", max_concurrency=3)
    held = [ks.acquire(provider="anthropic", holder=f"h{i}") for i in range(3)]
    assert {lease.key_id for lease in held} == {k}
    with pytest.raises(NoKeyAvailable) as err:
        ks.acquire(provider="anthropic", holder="h4")
    assert err.value.reason == "all_busy"
    assert err.value.retry_at == min(lease.expires_at for lease in held)
    assert ks.get_key(k).state == "busy" and ks.get_key(k).active_leases == 3
    ks.release(held[0])
    assert ks.acquire(provider="anthropic", holder="h5").key_id == k


def test_exhaustion_reasons_and_retry_at(ks: Keystore, clock: ManualClock) -> None:
    with pytest.raises(NoKeyAvailable) as err:
        ks.acquire(provider="openai", holder="t")
    assert (err.value.reason, err.value.retry_at) == ("none_enabled", None)
    a = _add(ks, "a")
    b = _add(ks, "b")
    ks.mark_limited(a, RateLimitSignal("rate_limit", T0 + timedelta(seconds=40), True, "test"))
    ks.mark_limited(b, RateLimitSignal("rate_limit", T0 + timedelta(seconds=20), True, "test"))
    with pytest.raises(NoKeyAvailable) as err:
        ks.acquire(provider="anthropic", holder="t")
    assert err.value.reason == "all_cooling"
    assert err.value.retry_at == T0 + timedelta(seconds=20)
    assert "key 1 (a): cooling until" in str(err.value)
    clock.advance(20)
    assert ks.acquire(provider="anthropic", holder="t").key_id == b


def test_expired_lease_stops_counting_and_is_reclaimed(ks: Keystore, clock: ManualClock) -> None:
    k = _add(ks, "k")
    dead = ks.acquire(provider="anthropic", holder="crashed-worker", ttl_s=30)
    clock.advance(29)
    with pytest.raises(NoKeyAvailable):
        ks.acquire(provider="anthropic", holder="t")
    clock.advance(1)
    fresh = ks.acquire(provider="anthropic", holder="t")
    assert fresh.key_id == k
    reclaimed = ks.audit_events(type="lease_reclaimed")
    assert [(e.key_id, e.details["holder"], e.details["lease_id"]) for e in reclaimed] == [
        (k, "crashed-worker", dead.id)
    ]
    assert ks.release(dead) is False  # the late holder learns it lost the lease
    with pytest.raises(LeaseLost):
        ks.renew(dead)
    assert ks.get_key(k).active_leases == 1


def test_renew_keeps_a_lease_alive(ks: Keystore, clock: ManualClock) -> None:
    _add(ks, "k")
    lease = ks.acquire(provider="anthropic", holder="t", ttl_s=30)
    for _ in range(5):
        clock.advance(20)
        ks.renew(lease, ttl_s=30)
    assert lease.expires_at == T0 + timedelta(seconds=130)
    with pytest.raises(NoKeyAvailable):
        ks.acquire(provider="anthropic", holder="other")
    assert ks.audit_events(type="lease_reclaimed") == []


def test_sweep_reclaims_expired_leases(ks: Keystore, clock: ManualClock) -> None:
    _add(ks, "k", max_concurrency=2)
    ks.acquire(provider="anthropic", holder="a", ttl_s=10)
    ks.acquire(provider="anthropic", holder="b", ttl_s=100)
    clock.advance(11)
    assert ks.reclaim_expired() == 1
    assert [e.details["holder"] for e in ks.audit_events(type="lease_reclaimed")] == ["a"]


def test_lowering_max_concurrency_never_exceeds_new_cap(ks: Keystore) -> None:
    k = _add(ks, "k", max_concurrency=3)
    held = [ks.acquire(provider="anthropic", holder=f"h{i}") for i in range(3)]
    ks.update_key(k, max_concurrency=1)
    for lease in held[:2]:
        ks.release(lease)
        with pytest.raises(NoKeyAvailable):  # one lease still out: already at the new cap
            ks.acquire(provider="anthropic", holder="x")
    ks.release(held[2])
    ks.acquire(provider="anthropic", holder="x")
    with pytest.raises(NoKeyAvailable):
        ks.acquire(provider="anthropic", holder="y")
    ks.update_key(k, max_concurrency=2)
    ks.acquire(provider="anthropic", holder="y")


def test_explain_agrees_with_acquire(ks: Keystore, clock: ManualClock) -> None:
    a = _add(ks, "a", priority=1)
    b = _add(ks, "b", priority=2)
    c = _add(ks, "c", priority=3)
    d = _add(ks, "d", priority=4)
    ks.update_key(d, enabled=False)
    ks.mark_limited(a, RateLimitSignal("rate_limit", T0 + timedelta(seconds=60), True, "hdr"))
    held = ks.acquire(provider="anthropic", holder="t")
    assert held.key_id == b
    explained = ks.explain("anthropic")
    reasons = {x.id: (x.eligible, x.reason) for x in explained.candidates}
    assert explained.chosen == c
    assert reasons[a][0] is False and reasons[a][1].startswith("cooling until")
    assert reasons[b] == (False, "busy: 1/1 leases in use")
    assert reasons[c][0] is True
    assert reasons[d] == (False, "disabled")
    assert ks.acquire(provider="anthropic", holder="t").key_id == explained.chosen
    with pytest.raises(InvalidInput):
        ks.explain("gemini")


def test_context_manager_releases_on_error(ks: Keystore) -> None:
    k = _add(ks, "k")
    with pytest.raises(RuntimeError), ks.lease(provider="anthropic", holder="t") as lease:
        assert lease.key_id == k
        assert ks.get_key(k).active_leases == 1
        raise RuntimeError("boom")
    assert ks.get_key(k).active_leases == 0


def test_undecryptable_key_is_skipped_here_and_pool_goes_on(
    store_url: str, clock: ManualClock
) -> None:
    # The key stays usable for everyone else: a process whose master key does not decrypt it
    # cannot know it is broken for all (tests/test_bad_config_master_key.py has the rest).
    writer_master = MasterKey([MasterKey.generate().encode()])
    writer = Keystore(create_keystore_engine(store_url), writer_master, clock=clock)
    bad = writer.add_key(name="bad", provider="openai", secret=secret_for("bad"), priority=1).id
    reader_master = MasterKey([MasterKey.generate().encode()])
    reader = Keystore(create_keystore_engine(store_url), reader_master, clock=clock)
    good = reader.add_key(name="good", provider="openai", secret=secret_for("good"), priority=2).id
    lease = reader.acquire(provider="openai", holder="t")
    assert lease.key_id == good
    assert reader.get_key(bad).state == "unusable"
    assert reader.status().providers["openai"].disabled == 1
    assert writer.get_key(bad).state == "available"
    assert writer.audit_events(type="key_unusable") == []
    writer.close()
    reader.close()


def test_status_counts_per_provider(ks: Keystore) -> None:
    _add(ks, "a")
    _add(ks, "b")
    c = _add(ks, "c")
    _add(ks, "o", provider="openai")
    ks.acquire(provider="anthropic", holder="t")
    ks.mark_limited(c, RateLimitSignal("usage_limit", T0 + timedelta(hours=5), True, "hdr"))
    status = ks.status()
    anth = status.providers["anthropic"]
    assert (anth.total, anth.available, anth.busy, anth.cooling, anth.disabled) == (3, 1, 1, 1, 0)
    assert anth.earliest_reset == T0 + timedelta(hours=5)
    assert status.providers["openai"].available == 1
    assert status.providers["claude-code"].total == 0
    assert len(status.keys) == 4


def test_keep_alive_renews_until_stopped(ks: Keystore, clock: ManualClock) -> None:
    _add(ks, "k")
    lease = ks.acquire(provider="anthropic", holder="t", ttl_s=0.6)
    first_expiry = lease.expires_at
    clock.advance(0.5)  # frozen otherwise: a renewal moves the expiry only if time moved
    keeper = ks.keep_alive(lease, ttl_s=0.6)
    try:
        deadline = time.monotonic() + 5
        while lease.expires_at == first_expiry:
            assert time.monotonic() < deadline, "never renewed"
            time.sleep(0.05)
    finally:
        keeper.stop()
    assert not keeper.lost
    assert lease.expires_at == T0 + timedelta(seconds=1.1)


def test_mark_unusable_takes_key_out_until_reset(ks: Keystore) -> None:
    bad = _add(ks, "bad", priority=1)
    good = _add(ks, "good", priority=2)
    ks.mark_unusable(bad, "provider rejected the key (401)", run_id="r1")
    assert ks.acquire(provider="anthropic", holder="t").key_id == good
    assert ks.get_key(bad).state == "unusable"
    assert [(e.key_id, e.run_id) for e in ks.audit_events(type="key_unusable")] == [(bad, "r1")]
