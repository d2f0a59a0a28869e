"""Deferred runs resume staggered to the capacity coming back, the longest-waiting first."""

from __future__ import annotations

from datetime import timedelta

from keystore import Keystore, ManualClock, RateLimitSignal
from tests.conftest import T0, secret_for


def test_waiters_are_batched_by_returning_capacity(ks: Keystore, clock: ManualClock) -> None:
    a = ks.add_key(name="a", provider="anthropic", secret=secret_for("a"), max_concurrency=2).id
    ks.add_key(name="b", provider="anthropic", secret=secret_for("b"))
    ks.add_key(
        name="off", provider="anthropic", secret=secret_for("c"), max_concurrency=9, enabled=False
    )
    reset = T0 + timedelta(seconds=20)
    ks.mark_limited(a, RateLimitSignal("rate_limit", reset, True, "test"))
    ks.update_config(resume_stagger_s=2)
    # capacity back at the reset: 2 (a) + 1 (b); the disabled key does not count
    times = []
    for i in range(7):
        times.append(ks.register_wait(run_id=f"run-{i}", provider="anthropic", reset_at=reset))
        clock.advance(0.1)
    step = timedelta(seconds=2)
    assert times == [reset] * 3 + [reset + step] * 3 + [reset + 2 * step]


def test_a_run_that_defers_again_keeps_its_place(ks: Keystore, clock: ManualClock) -> None:
    ks.add_key(name="a", provider="openai", secret=secret_for("a"))
    ks.update_config(resume_stagger_s=5)
    reset = T0 + timedelta(seconds=30)
    assert ks.register_wait(run_id="old", provider="openai", reset_at=reset) == reset
    clock.advance(1)
    assert ks.register_wait(run_id="new", provider="openai", reset_at=reset) == reset + timedelta(
        seconds=5
    )
    clock.advance(1)
    later = reset + timedelta(seconds=60)
    assert ks.register_wait(run_id="old", provider="openai", reset_at=later) == later
    assert ks.clear_wait("old") == later
    assert ks.clear_wait("old") is None


def test_stale_waits_do_not_delay_new_ones(ks: Keystore, clock: ManualClock) -> None:
    ks.add_key(name="a", provider="openai", secret=secret_for("a"))
    ks.update_config(resume_stagger_s=10)
    ks.register_wait(run_id="cancelled", provider="openai", reset_at=T0 + timedelta(seconds=5))
    clock.advance(3 * 3600)
    now = clock()
    assert ks.register_wait(
        run_id="new", provider="openai", reset_at=now + timedelta(seconds=5)
    ) == (now + timedelta(seconds=5))
