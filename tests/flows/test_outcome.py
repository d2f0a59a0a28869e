"""The decision table of flows/outcome.py, row by row: a pure function, no Prefect, no database."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from flows.executors import (
    AgentFailed,
    KeyRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RequestRejected,
    SessionNotFound,
    TurnResult,
)
from flows.outcome import (
    MAX_ROTATIONS,
    Backoff,
    Defer,
    Fail,
    Fallback,
    Rotate,
    Served,
    Tally,
    WaitInline,
    decide,
)
from flows.retry_policy import AGENT_CRASH, TRANSIENT
from keystore import LeaseLost, Marked, NoKeyAvailable, RateLimitSignal, RotationConfig, Scope

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CONFIG = RotationConfig()
KEYS = ("key 1 (a): cooling until ...", "key 2 (b): cooling until ...")


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def signal(kind: str, resets_in: float | None = None, retryable: bool = True) -> RateLimitSignal:
    resets_at = at(resets_in) if resets_in is not None else None
    return RateLimitSignal(kind=kind, resets_at=resets_at, retryable=retryable, source="test")  # type: ignore[arg-type]


def exhausted(reason: str, retry_in: float | None) -> NoKeyAvailable:
    retry_at = at(retry_in) if retry_in is not None else None
    return NoKeyAvailable("anthropic", reason=reason, retry_at=retry_at, detail=KEYS)  # type: ignore[arg-type]


def on_key(event, **kwargs):  # type: ignore[no-untyped-def]
    kwargs.setdefault("config", CONFIG)
    kwargs.setdefault("rng", random.Random(1))
    return decide(event, now=NOW, provider="anthropic", key_id=7, **kwargs)


def on_pool(event, **kwargs):  # type: ignore[no-untyped-def]
    kwargs.setdefault("config", CONFIG)
    return decide(event, now=NOW, provider="anthropic", **kwargs)


def cooled(scope: Scope, until_s: float | None) -> Marked:
    return Marked((7,), at(until_s) if until_s is not None else None, scope)


def test_a_result_is_served() -> None:
    result = TurnResult(text="hi", checkpoint={}, utilization=None, usage={})
    assert on_key(result) == Served(result)


@pytest.mark.parametrize(
    ("event", "marked"),
    [
        (signal("rate_limit", 30), cooled(Scope.KEY, 30)),
        (signal("usage_limit", 18000), cooled(Scope.KEY, 18000)),
        (signal("quota_exhausted", 3600, retryable=False), cooled(Scope.KEY, 3600)),
        (signal("rate_limit", 30), cooled(Scope.GROUP, 30)),
        (signal("quota_exhausted", None, retryable=False), cooled(Scope.UNUSABLE, None)),
        (signal("rate_limit", None), cooled(Scope.IP, 60)),
    ],
    ids=["rate-limit", "usage-limit", "quota-with-reset", "group", "billing", "ip-wide"],
)
def test_limits_rotate_to_the_next_key(event: RateLimitSignal, marked: Marked) -> None:
    outcome = on_key(event, marked=marked)
    assert isinstance(outcome, Rotate) and outcome.from_key == 7
    assert event.kind in outcome.why


def test_a_rejected_key_and_a_lost_lease_rotate() -> None:
    rejected = KeyRejected("HTTP 401", agent="anthropic", key_id=7, status=401)
    assert on_key(rejected) == Rotate(7, "HTTP 401")
    lost = on_key(LeaseLost("abc"))
    assert isinstance(lost, Rotate) and "lease abc was lost" in lost.why


def test_too_many_rotations_in_one_turn_fail() -> None:
    outcome = on_key(signal("rate_limit", 30), tally=Tally(rotations=MAX_ROTATIONS))
    assert isinstance(outcome, Fail) and "rotated" in outcome.why


@pytest.mark.parametrize(
    "event",
    [
        signal("overloaded"),
        ProviderUnavailable("HTTP 500 api_error", agent="anthropic", key_id=7, status=500),
        ProviderTimeout("timed out", agent="anthropic", key_id=7),
    ],
    ids=["overloaded", "5xx", "timeout"],
)
def test_transient_failures_back_off_with_jitter_then_defer_then_fail(event: object) -> None:
    first = on_key(event)
    assert isinstance(first, Backoff) and first.budget == "transient"
    assert TRANSIENT.first_delay_s / 2 <= first.delay_s <= TRANSIENT.first_delay_s
    later = on_key(event, tally=Tally(transient=3))
    assert isinstance(later, Backoff) and 4.0 <= later.delay_s <= 8.0
    spread = {on_key(event, tally=Tally(transient=3), rng=None).delay_s for _ in range(20)}  # type: ignore[union-attr]
    assert len(spread) > 1  # jittered: parallel runs do not retry in lockstep
    deferred = on_key(event, tally=Tally(transient=TRANSIENT.inline_attempts))
    assert isinstance(deferred, Defer) and deferred.budget == "transient"
    assert deferred.until == at(TRANSIENT.max_delay_s)
    inline = on_key(event, tally=Tally(transient=TRANSIENT.inline_attempts), can_defer=False)
    assert isinstance(inline, Backoff)
    spent = on_key(event, tally=Tally(transient=TRANSIENT.max_attempts))
    assert isinstance(spent, Fail) and "gave up after" in spent.why


def test_an_overload_with_a_named_reset_waits_at_least_that_long() -> None:
    outcome = on_key(signal("overloaded", resets_in=20))
    assert isinstance(outcome, Backoff) and outcome.delay_s == 20


def test_a_crashed_cli_is_retried_a_few_times_then_fails() -> None:
    crash = AgentFailed("the CLI exited 1", agent="claude-code", key_id=7)
    first = on_key(crash)
    assert isinstance(first, Backoff) and first.budget == "agent_crash"
    spent = on_key(crash, tally=Tally(agent_crash=AGENT_CRASH.max_attempts))
    assert isinstance(spent, Fail) and "the CLI exited 1" in spent.why


@pytest.mark.parametrize(
    "event",
    [
        signal("request_too_large", retryable=False),
        RequestRejected("HTTP 400 invalid_request_error", agent="anthropic", key_id=7, status=400),
        SessionNotFound("No conversation found", agent="claude-code", key_id=7),
    ],
    ids=["too-large", "4xx", "no-session"],
)
def test_what_no_key_can_fix_fails(event: object) -> None:
    outcome = on_key(event)
    assert isinstance(outcome, Fail) and not outcome.exhausted


def test_a_busy_pool_is_polled_in_process() -> None:
    outcome = on_pool(exhausted("all_busy", 300))
    assert isinstance(outcome, WaitInline) and outcome.until == at(0.25)


def test_a_near_reset_is_waited_for_in_process() -> None:
    outcome = on_pool(exhausted("all_cooling", CONFIG.inline_wait_max_s))
    assert isinstance(outcome, WaitInline) and outcome.until == at(CONFIG.inline_wait_max_s)


def test_a_ready_fallback_is_taken_when_enabled() -> None:
    config = RotationConfig(fallback_enabled=True, fallback_provider="openai")
    outcome = on_pool(exhausted("all_cooling", 600), config=config, fallback_ready=True)
    assert outcome == Fallback("openai", "every anthropic key is spent")
    not_ready = on_pool(exhausted("all_cooling", 600), config=config, fallback_ready=False)
    assert isinstance(not_ready, Defer)
    off = on_pool(exhausted("all_cooling", 600), fallback_ready=True)
    assert isinstance(off, Defer)


def test_a_far_reset_defers_a_deployed_run_and_waits_in_an_undeployed_one() -> None:
    deferred = on_pool(exhausted("all_cooling", 600))
    assert isinstance(deferred, Defer) and deferred.until == at(600) and deferred.budget is None
    assert deferred.provider == "anthropic" and KEYS[0] in deferred.why
    inline = on_pool(exhausted("all_cooling", 600), can_defer=False)
    assert isinstance(inline, WaitInline) and inline.until == at(600)


@pytest.mark.parametrize(
    ("event", "config", "says"),
    [
        (exhausted("all_cooling", 600), RotationConfig(auto_wait=False), "auto_wait is off"),
        (exhausted("all_cooling", 40000), CONFIG, "beyond max_wait_s=28800"),
        (exhausted("none_enabled", None), CONFIG, "no anthropic key can be used (none_enabled)"),
    ],
    ids=["auto-wait-off", "too-far", "none-enabled"],
)
def test_otherwise_the_run_fails_naming_the_keys(
    event: NoKeyAvailable, config: RotationConfig, says: str
) -> None:
    outcome = on_pool(event, config=config)
    assert isinstance(outcome, Fail) and outcome.exhausted
    assert says in outcome.why and KEYS[1] in outcome.why


def test_tally_counts_per_budget() -> None:
    tally = Tally()
    tally = tally.after(Rotate(1, "x"))
    tally = tally.after(Backoff(1.0, "x", "transient"))
    tally = tally.after(Defer(NOW, "x", "anthropic", "transient"))
    tally = tally.after(Backoff(1.0, "x", "agent_crash"))
    tally = tally.after(WaitInline(NOW, "x"))
    assert tally == Tally(rotations=1, transient=2, agent_crash=1)
