"""Limit state: cooling rules, groups, unusable quotas, IP-wide limits, utilization."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keystore import KeyNotFound, Keystore, ManualClock, NoKeyAvailable, RateLimitSignal
from keystore.cooling import IP_WIDE_WINDOW_S
from tests.conftest import T0, secret_for


def _add(ks: Keystore, name: str, **kw: object) -> int:
    return ks.add_key(name=name, provider="anthropic", secret=secret_for(name), **kw).id  # type: ignore[arg-type]


def _signal(
    kind: str = "rate_limit",
    after_s: float | None = 30,
    retryable: bool = True,
    utilization: float | None = None,
) -> RateLimitSignal:
    resets = T0 + timedelta(seconds=after_s) if after_s is not None else None
    return RateLimitSignal(kind, resets, retryable, "test", utilization)  # type: ignore[arg-type]


def test_later_deadline_is_never_shortened(ks: Keystore) -> None:
    k = _add(ks, "k")
    ks.mark_limited(k, _signal("usage_limit", after_s=5 * 3600))
    ks.mark_limited(k, _signal("rate_limit", after_s=1))
    key = ks.get_key(k)
    assert key.cooling_until == T0 + timedelta(hours=5)
    assert key.cooling_reason == "usage_limit (test)"
    assert key.rate_limit_hits == 2 and key.state == "cooling"
    ks.mark_limited(k, _signal("usage_limit", after_s=6 * 3600))
    assert ks.get_key(k).cooling_until == T0 + timedelta(hours=6)


def test_no_reset_means_configured_cooldown(ks: Keystore, clock: ManualClock) -> None:
    k = _add(ks, "k")
    ks.update_config(no_reset_cooldown_s=45)
    marked = ks.mark_limited(k, _signal(after_s=None))
    assert marked.cooling_until == T0 + timedelta(seconds=45)
    assert ks.earliest_reset("anthropic") == T0 + timedelta(seconds=45)
    clock.advance(45)
    assert ks.get_key(k).state == "available"
    assert ks.earliest_reset("anthropic") is None


def test_group_cools_together(ks: Keystore) -> None:
    a = _add(ks, "a", group="org-1")
    b = _add(ks, "b", group="org-1")
    c = _add(ks, "c", group="org-2")
    d = _add(ks, "d")
    marked = ks.mark_limited(a, _signal(after_s=60))
    assert marked.scope == "group" and set(marked.key_ids) == {a, b}
    states = {k.id: k.state for k in ks.list_keys()}
    assert states == {a: "cooling", b: "cooling", c: "available", d: "available"}
    assert ks.get_key(b).rate_limit_hits == 0  # only the key that was hit counts the hit


def test_overloaded_and_too_large_do_not_cool(ks: Keystore) -> None:
    k = _add(ks, "k")
    assert ks.mark_limited(k, _signal("overloaded", after_s=None)).scope == "none"
    assert (
        ks.mark_limited(k, _signal("request_too_large", after_s=None, retryable=False)).scope
        == "none"
    )
    assert ks.get_key(k).state == "available"


def test_billing_quota_needs_a_person(ks: Keystore) -> None:
    k = _add(ks, "k")
    other = _add(ks, "other")
    marked = ks.mark_limited(k, _signal("quota_exhausted", after_s=None, retryable=False))
    assert marked.scope == "unusable"
    assert ks.get_key(k).state == "unusable"
    assert ks.acquire(provider="anthropic", holder="t").key_id == other
    assert ks.earliest_reset("anthropic") is None  # nothing resets by itself
    assert ks.reset_key(k).state == "available"
    assert [e.type for e in ks.audit_events(key_id=k)][:2] == ["key_reset", "key_rate_limited"]


def test_daily_quota_with_reset_cools_until_then(ks: Keystore) -> None:
    k = _add(ks, "k")
    ks.mark_limited(k, _signal("quota_exhausted", after_s=86400, retryable=True))
    assert ks.get_key(k).cooling_until == T0 + timedelta(days=1)


def test_many_groups_without_reset_is_ip_wide_and_short(ks: Keystore, clock: ManualClock) -> None:
    keys = [_add(ks, f"k{i}") for i in range(4)]
    ks.update_config(no_reset_cooldown_s=20)
    ks.mark_limited(keys[0], _signal(after_s=None))
    clock.advance(1)
    ks.mark_limited(keys[1], _signal("quota_exhausted", after_s=None, retryable=False))
    assert ks.get_key(keys[1]).state == "unusable"
    clock.advance(1)
    marked = ks.mark_limited(keys[2], _signal(after_s=None))
    assert marked.scope == "ip"
    assert set(marked.key_ids) == set(keys)
    # the whole provider cools briefly, nobody stays benched for good
    assert {k.state for k in ks.list_keys()} == {"cooling"}
    assert ks.earliest_reset("anthropic") == T0 + timedelta(seconds=2 + 20)
    clock.advance(20)
    assert ks.acquire(provider="anthropic", holder="t").key_id in keys


def test_spread_out_429s_are_not_ip_wide(ks: Keystore, clock: ManualClock) -> None:
    keys = [_add(ks, f"k{i}") for i in range(3)]
    for key in keys:
        assert ks.mark_limited(key, _signal(after_s=None)).scope == "key"
        clock.advance(IP_WIDE_WINDOW_S + 1)


def test_named_resets_are_taken_as_given(ks: Keystore) -> None:
    keys = [_add(ks, f"k{i}") for i in range(4)]
    for key in keys[:3]:
        ks.mark_limited(key, _signal("usage_limit", after_s=5 * 3600))
    assert ks.get_key(keys[3]).state == "available"
    assert ks.get_key(keys[0]).cooling_until == T0 + timedelta(hours=5)


def test_utilization_is_capped_and_a_missing_key_is_not_found(ks: Keystore) -> None:
    k = _add(ks, "k")
    reset = str(int((T0 + timedelta(hours=5)).timestamp()))
    headers = {
        "anthropic-ratelimit-unified-5h-utilization": "1.7",  # a window can be overrun
        "anthropic-ratelimit-unified-5h-reset": reset,
    }
    ks.record_response(k, provider="claude-code", status=200, headers=headers)
    assert ks.get_key(k).utilization == 1.0
    with pytest.raises(KeyNotFound):
        ks.mark_limited(999, _signal())


def test_all_cooling_acquire_reports_earliest(ks: Keystore) -> None:
    a = _add(ks, "a")
    ks.mark_limited(a, _signal(after_s=90))
    with pytest.raises(NoKeyAvailable) as err:
        ks.acquire(provider="anthropic", holder="t")
    assert (err.value.reason, err.value.retry_at) == ("all_cooling", T0 + timedelta(seconds=90))
