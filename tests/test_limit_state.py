"""Limit state from every response (record_response) and the admission that reads it, on SQLite
and PostgreSQL, with an injected clock: a spent bucket stops leases until its reset, a request
that does not fit goes to a key that fits, waiters are admitted only as far as a bucket holds,
and resets order the choice."""

from __future__ import annotations

import contextlib
import threading
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from api.emulator import EmulatorConfig, LimitRule, serve_emulator
from api.emulator.clock import ManualClock as EmulatorClock
from keystore import Keystore, ManualClock, MasterKey, NoKeyAvailable
from keystore.db import create_keystore_engine, upgrade
from tests.conftest import T0, secret_for


def _add(ks: Keystore, name: str, provider: str = "anthropic", **kw: object) -> int:
    return ks.add_key(name=name, provider=provider, secret=secret_for(name), **kw).id  # type: ignore[arg-type]


def _rfc3339(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _buckets(**buckets: tuple[int, int, float]) -> dict[str, str]:
    """Anthropic API-key headers: bucket=(limit, remaining, reset in seconds from T0)."""
    headers = {}
    for name, (limit, remaining, reset_s) in buckets.items():
        bucket = name.replace("_", "-")
        headers[f"anthropic-ratelimit-{bucket}-limit"] = str(limit)
        headers[f"anthropic-ratelimit-{bucket}-remaining"] = str(remaining)
        headers[f"anthropic-ratelimit-{bucket}-reset"] = _rfc3339(reset_s)
    return headers


def _ok(ks: Keystore, key: int, headers: dict[str, str], provider: str = "anthropic") -> None:
    """A success on `key`, answered a moment before now (the clock stands still in these tests;
    leases taken at the very instant of a reading would count as already in it)."""
    received = ks.now() - timedelta(milliseconds=1)
    signal = ks.record_response(
        key, provider=provider, status=200, headers=headers, received_at=received
    )
    assert signal is None


def test_a_success_that_says_remaining_0_stops_leases_until_the_reset(
    ks: Keystore, clock: ManualClock
) -> None:
    a = _add(ks, "a", priority=1)
    b = _add(ks, "b", priority=2)
    _ok(ks, a, _buckets(requests=(10, 0, 20)))
    assert ks.acquire(provider="anthropic", holder="h").key_id == b
    explained = {c.id: c.reason for c in ks.explain("anthropic").candidates}
    assert explained[a].startswith(f"limited until {_rfc3339(20)[:-1]}")
    assert "requests 0 left" in explained[a]
    assert ks.get_key(a).state == "cooling"  # how the API and the CLI show a spent bucket
    clock.advance(20)
    assert ks.acquire(provider="anthropic", holder="h").key_id == a  # full again at its reset
    assert ks.get_key(a).state != "cooling"


def _near(moment: datetime | None, seconds: float) -> bool:
    """`moment` is T0 + `seconds`, give or take the millisecond the readings are taken before
    now (and SQLite's millisecond time arithmetic)."""
    return moment is not None and abs((moment - T0).total_seconds() - seconds) < 0.01


def test_with_every_key_spent_retry_at_is_the_earliest_refill(ks: Keystore) -> None:
    a = _add(ks, "a")
    b = _add(ks, "b")
    _ok(ks, a, _buckets(input_tokens=(10_000, 0, 30)))
    _ok(ks, b, _buckets(input_tokens=(10_000, 0, 12), requests=(50, 0, 40)))
    with pytest.raises(NoKeyAvailable) as err:
        ks.acquire(provider="anthropic", holder="h", input_tokens=5_000)
    # b waits for its requests window (40 s); a's token bucket, refilling to full in 30 s,
    # holds the 5,000 tokens at half of that
    assert err.value.reason == "all_cooling"
    assert _near(err.value.retry_at, 15), err.value.retry_at


def test_a_token_bucket_refills_toward_its_reset(ks: Keystore, clock: ManualClock) -> None:
    """A continuously refilling bucket (Anthropic's) serves a request as soon as it holds it,
    not at its full refill; a requests window holds nothing more until it resets."""
    tokens = _add(ks, "tokens", priority=1)
    window = _add(ks, "window", priority=2)
    _ok(ks, tokens, _buckets(input_tokens=(10_000, 1_000, 60)))
    _ok(ks, window, _buckets(requests=(10, 0, 60)))
    with pytest.raises(NoKeyAvailable) as err:
        ks.acquire(provider="anthropic", holder="h", input_tokens=4_000)
    assert _near(err.value.retry_at, 20), err.value.retry_at  # 3,000 more at 150 a second
    clock.advance(19.9)
    with pytest.raises(NoKeyAvailable):
        ks.acquire(provider="anthropic", holder="h", input_tokens=4_000)
    explained = {c.id: c.reason for c in ks.explain("anthropic", input_tokens=4_000).candidates}
    assert "input-tokens 3985 left, 0 reserved, 4000 needed" in explained[tokens]
    clock.advance(0.1)
    assert ks.acquire(provider="anthropic", holder="h", input_tokens=4_000).key_id == tokens
    clock.advance(30)  # well before the window's reset: still nothing on it
    assert ks.explain("anthropic").candidates[-1].reason.startswith("limited")


def test_a_request_goes_to_a_key_its_tokens_fit(ks: Keystore) -> None:
    small = _add(ks, "small", priority=1)
    big = _add(ks, "big", priority=2)
    _ok(ks, small, _buckets(input_tokens=(40_000, 1_500, 60)))
    _ok(ks, big, _buckets(input_tokens=(40_000, 30_000, 60)))
    assert ks.acquire(provider="anthropic", holder="h", input_tokens=1_000).key_id == small
    lease = ks.acquire(provider="anthropic", holder="h", input_tokens=2_000)
    assert lease.key_id == big
    reasons = {c.id: c.reason for c in ks.explain("anthropic", input_tokens=2_000).candidates}
    assert "input-tokens 1500 left, 1000 reserved, 2000 needed" in reasons[small]
    with pytest.raises(NoKeyAvailable) as err:
        ks.acquire(provider="anthropic", holder="h", input_tokens=35_000)
    # big holds 35,000 besides the 2,000 reserved on it once 7,000 more refilled (at 10,000 in
    # 60 s: 42 s); small needs 34,500 more at 38,500 in 60 s (53.8 s)
    assert _near(err.value.retry_at, 42), err.value.retry_at


def test_waiters_are_admitted_only_as_far_as_the_bucket_holds(
    ks: Keystore, clock: ManualClock
) -> None:
    """The herd: many waiters woken by one reset. A bucket with room for two requests admits two
    leases; the third waits for one of them to come back with a fresh reading."""
    k = _add(ks, "k", max_concurrency=8)
    _ok(ks, k, _buckets(requests=(10, 2, 60)))
    first = ks.acquire(provider="anthropic", holder="w1")
    ks.acquire(provider="anthropic", holder="w2")
    with pytest.raises(NoKeyAvailable) as err:
        ks.acquire(provider="anthropic", holder="w3")
    assert err.value.reason == "all_busy"  # what frees it is a lease coming back, not the reset
    clock.advance(0.5)  # w1's and w2's requests were sent; w1's answer: 0 left
    ks.record_response(k, provider="anthropic", status=200, headers=_buckets(requests=(10, 0, 60)))
    ks.release(first)
    with pytest.raises(NoKeyAvailable) as err:
        ks.acquire(provider="anthropic", holder="w3")
    assert err.value.reason == "all_cooling"  # now the reset is what it waits for
    clock.advance(60)
    assert ks.acquire(provider="anthropic", holder="w3").key_id == k


def test_token_reservations_count_until_a_newer_reading(ks: Keystore) -> None:
    k = _add(ks, "k", max_concurrency=8)
    _ok(ks, k, _buckets(input_tokens=(10_000, 5_000, 60)))
    ks.acquire(provider="anthropic", holder="a", input_tokens=3_000)
    with pytest.raises(NoKeyAvailable):
        ks.acquire(provider="anthropic", holder="b", input_tokens=3_000)  # 5000 - 3000 < 3000
    ks.acquire(provider="anthropic", holder="c", input_tokens=2_000)  # 5000 - 3000 >= 2000


def test_an_older_response_does_not_overwrite_a_newer_reading(
    ks: Keystore, clock: ManualClock
) -> None:
    k = _add(ks, "k")
    ks.record_response(k, provider="anthropic", status=200, headers=_buckets(requests=(10, 0, 30)))
    late = T0 - timedelta(seconds=1)  # answered earlier, recorded later
    ks.record_response(
        k,
        provider="anthropic",
        status=200,
        headers=_buckets(requests=(10, 9, 30)),
        received_at=late,
    )
    with pytest.raises(NoKeyAvailable):
        ks.acquire(provider="anthropic", holder="h")


def test_a_429_cools_for_the_reset_it_names(ks: Keystore) -> None:
    k = _add(ks, "k")
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    signal = ks.record_response(
        k, provider="anthropic", status=429, headers={"retry-after": "25"}, body=body
    )
    assert signal is not None and signal.kind == "rate_limit"
    assert ks.get_key(k).cooling_until == T0 + timedelta(seconds=25)  # not no_reset_cooldown_s
    assert [e.type for e in ks.audit_events()][:1] == ["key_rate_limited"]


def _unified(util_5h: float, reset_5h_s: float, status: str = "allowed") -> dict[str, str]:
    epoch = int((T0 + timedelta(seconds=reset_5h_s)).timestamp())
    return {
        "anthropic-ratelimit-unified-status": status,
        "anthropic-ratelimit-unified-5h-utilization": str(util_5h),
        "anthropic-ratelimit-unified-5h-reset": str(epoch),
        "anthropic-ratelimit-unified-5h-status": status,
    }


def test_the_subscription_whose_window_resets_soonest_is_used_first(ks: Keystore) -> None:
    late = _add(ks, "late", provider="claude-code")
    soon = _add(ks, "soon", provider="claude-code")
    fresh = _add(ks, "fresh", provider="claude-code")  # never answered: used normally
    _ok(ks, late, _unified(0.2, 4 * 3600), provider="claude-code")
    _ok(ks, soon, _unified(0.6, 1 * 3600), provider="claude-code")
    order = [ks.acquire(provider="claude-code", holder="h").key_id for _ in range(3)]
    assert order == [soon, late, fresh]  # soon's unused quota expires first


def test_a_reserve_leaves_part_of_a_window_unused(ks: Keystore, clock: ManualClock) -> None:
    shared = ks.add_key(
        name="shared", provider="claude-code", secret=secret_for("shared"), reserve=0.2
    ).id
    own = _add(ks, "own", provider="claude-code", priority=200)
    _ok(ks, shared, _unified(0.85, 3600), provider="claude-code")
    assert ks.acquire(provider="claude-code", holder="h").key_id == own
    reasons = {c.id: c.reason for c in ks.explain("claude-code").candidates}
    assert "unified-5h window 85% used (reserve 0.2)" in reasons[shared]
    clock.advance(3600)  # the window reset: the reading is no longer trusted
    assert ks.acquire(provider="claude-code", holder="h2").key_id == shared


def test_utilization_ages_out_at_its_reset(ks: Keystore, clock: ManualClock) -> None:
    hot = _add(ks, "hot", priority=1)
    cool = _add(ks, "cool", priority=1)
    _ok(ks, hot, _buckets(requests=(100, 3, 60)))  # 97 % used: chosen last
    _ok(ks, cool, _buckets(requests=(100, 90, 600)))
    assert ks.explain("anthropic").chosen == cool
    assert ks.get_key(hot).utilization == pytest.approx(0.97)
    clock.advance(61)
    assert ks.get_key(hot).utilization is None
    assert ks.explain("anthropic").chosen == hot  # its fresh window beats cool's used one


def test_a_busy_key_is_expected_back_after_its_usual_hold_time(
    ks: Keystore, clock: ManualClock
) -> None:
    ks.update_config(lease_ttl_s=300)
    _add(ks, "k")
    for _ in range(3):  # leases on this key are held for about 2 s
        lease = ks.acquire(provider="anthropic", holder="h")
        clock.advance(2)
        ks.release(lease)
    ks.acquire(provider="anthropic", holder="h")
    with pytest.raises(NoKeyAvailable) as err:
        ks.acquire(provider="anthropic", holder="other")
    assert err.value.reason == "all_busy"
    assert err.value.retry_at == clock.now + timedelta(seconds=2)  # not the 300 s TTL


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_concurrent_acquirers_never_overrun_a_bucket_on_postgresql(
    store_url: str, ks: Keystore, clock: ManualClock
) -> None:
    """Eight threads race, round after round, for a key whose bucket holds three requests:
    exactly three get it each round. A fourth is the race the taking statement alone loses (it
    counts the leases out in a snapshot taken before it waits for the key row's lock;
    leases.still_admitted looks again once it holds the slot)."""
    threads_n, rounds = 8, 25
    k = _add(ks, "k", max_concurrency=threads_n)
    start, taken, released = (threading.Barrier(threads_n + 1) for _ in range(3))
    won: list[list[int]] = [[] for _ in range(rounds)]

    def race(i: int) -> None:
        mine = Keystore(create_keystore_engine(store_url), ks.master, clock=ks.now)
        try:
            for r in range(rounds):
                start.wait()
                lease = None
                with contextlib.suppress(NoKeyAvailable):
                    lease = mine.acquire(provider="anthropic", holder=f"t{i}")
                    won[r].append(lease.key_id)
                taken.wait()
                if lease is not None:
                    mine.release(lease)
                released.wait()
        finally:
            mine.close()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for r in range(rounds):
        clock.advance(1)  # a newer reading: 3 requests left again
        _ok(ks, k, _buckets(requests=(10, 3, 60)))
        start.wait()
        taken.wait()
        released.wait()
    for thread in threads:
        thread.join()
    assert [len(w) for w in won] == [3] * rounds


def test_the_emulators_answers_keep_a_key_from_a_certain_refusal(
    tmp_path: Path, master: MasterKey
) -> None:
    """Over real sockets: two keys of 3 requests per window. Recording every response (not only
    refusals) means the pool stops using a key when its last answer says 0 remain: 6 requests are
    served and the 7th waits for a reset instead of being sent to a refusal."""
    emulator_clock = EmulatorClock()
    config = EmulatorConfig(limits=[LimitRule(key_prefix="sk-ant-api03-", requests=3, window_s=60)])
    with serve_emulator(config, clock=emulator_clock) as emulator:
        engine = create_keystore_engine(f"sqlite:///{tmp_path / 'ks.db'}")
        upgrade(engine)
        store = Keystore(engine, master, clock=ManualClock(T0))
        for name in ("a", "b"):
            _add(store, name)
        served = 0
        with httpx.Client(base_url=emulator.base_url) as client:
            while True:
                try:
                    lease = store.acquire(provider="anthropic", holder="job")
                except NoKeyAvailable as exhausted:
                    assert exhausted.retry_at is not None
                    break
                response = client.post(
                    "/v1/messages",
                    headers={"x-api-key": lease.secret(), "anthropic-version": "2023-06-01"},
                    json={
                        "model": "m",
                        "max_tokens": 16,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                )
                store.record_response(
                    lease.key_id,
                    provider="anthropic",
                    status=response.status_code,
                    headers=response.headers,
                    body=response.content,
                )
                store.release(lease)
                served += response.status_code == 200
        store.close()
        assert served == 6
        counters = emulator.admin.keys()
        assert sum(k.rate_limited for k in counters) == 0


def test_keys_of_one_group_share_what_the_provider_said(ks: Keystore) -> None:
    """An org-wide limit: one key's answer speaks for every key of its group, and a lease out on
    one counts against all of them."""
    a = _add(ks, "a", group="org", max_concurrency=4)
    b = _add(ks, "b", group="org", max_concurrency=4)
    loner = _add(ks, "loner", priority=200)
    _ok(ks, a, _buckets(requests=(40, 1, 30)))
    assert {(x.key_id, x.remaining) for x in ks.limits()} == {(a, 1), (b, 1)}
    first = ks.acquire(provider="anthropic", holder="h1")
    assert first.key_id in (a, b)
    assert ks.acquire(provider="anthropic", holder="h2").key_id == loner  # the org is full
    reasons = {c.id: c.reason for c in ks.explain("anthropic").candidates}
    assert "requests 1 left, 1 in flight" in reasons[a] and "1 in flight" in reasons[b]
