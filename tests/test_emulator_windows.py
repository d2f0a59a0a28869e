"""Window logic and admission, on an injected clock: no sockets, no sleeps."""

from __future__ import annotations

import pytest

from api.emulator import EmulatorConfig, FaultRule, KeyMatch, LimitRule, ManualClock, WindowLimit
from api.emulator.keys import Credential
from api.emulator.state import EmulatorState
from api.emulator.windows import Bucket, Usage

T0 = 1_767_225_600.0
ONE = Usage(input_tokens=10, output_tokens=5)


def bucket(**limit: object) -> Bucket:
    return Bucket(bucket_id="key:x", scope="key", limit=WindowLimit.model_validate(limit))


def serve(b: Bucket, clock: ManualClock, usage: Usage = ONE) -> bool:
    return b.commit(now=clock(), usage=usage, key_fingerprint="f").admitted


def test_fixed_window_opens_at_first_request_and_resets_all_at_once() -> None:
    clock, b = ManualClock(T0), bucket(requests=2, window_s=10)
    clock.advance(3)
    assert serve(b, clock)
    first = b.decide(now=clock(), usage=ONE)
    assert [(s.dimension, s.limit, s.remaining, s.reset_at) for s in first.states] == [
        ("requests", 2, 0, T0 + 13)
    ]
    assert serve(b, clock)
    clock.advance(9.9)
    refused = b.decide(now=clock(), usage=ONE)
    assert not refused.admitted and not refused.too_large
    assert refused.retry_at == pytest.approx(T0 + 13)
    assert refused.states[0].remaining == 0
    clock.advance(0.1)  # exactly at the reset: a new window
    assert serve(b, clock) and serve(b, clock) and not serve(b, clock)
    assert [(w[0], w[1], len(w[2])) for w in b.served_windows()] == [
        (T0 + 3, T0 + 13, 2),
        (T0 + 13, T0 + 23, 2),
    ]
    assert b.served_over_limit() == 0


def test_sliding_window_frees_one_slot_as_the_oldest_request_ages_out() -> None:
    clock, b = ManualClock(T0), bucket(requests=2, window_s=10, window="sliding")
    assert serve(b, clock)
    clock.advance(4)
    assert serve(b, clock)
    refused = b.decide(now=clock(), usage=ONE)
    assert refused.retry_at == pytest.approx(T0 + 10)
    clock.advance(6)  # T0 + 10: the first request leaves the window
    assert serve(b, clock)
    assert not serve(b, clock)
    assert b.decide(now=clock(), usage=ONE).retry_at == pytest.approx(T0 + 14)
    # Every sliding window (one ending at each request) served at most 2.
    assert max(len(served) for _s, _e, served in b.served_windows()) == 2
    assert b.served_over_limit() == 0


def test_token_cap_counts_input_plus_output_and_says_when_enough_frees_up() -> None:
    clock, b = ManualClock(T0), bucket(tokens=40, window_s=10, window="sliding")
    assert serve(b, clock, Usage(input_tokens=10, output_tokens=10))  # 20
    clock.advance(1)
    assert serve(b, clock, Usage(input_tokens=5, output_tokens=5))  # 30
    clock.advance(1)
    big = Usage(input_tokens=20, output_tokens=5)  # 25: needs both earlier requests gone
    refused = b.decide(now=clock(), usage=big)
    assert not refused.admitted
    assert refused.retry_at == pytest.approx(T0 + 11)
    assert [(s.dimension, s.remaining) for s in refused.states] == [("tokens", 10)]


def test_a_request_over_the_cap_is_too_large_and_never_retryable() -> None:
    clock, b = ManualClock(T0), bucket(tokens=20, window_s=10)
    refused = b.decide(now=clock(), usage=Usage(input_tokens=30, output_tokens=1))
    assert refused.too_large and refused.retry_at is None and not refused.admitted


def test_input_and_output_caps_are_separate_dimensions() -> None:
    clock, b = ManualClock(T0), bucket(input_tokens=15, output_tokens=100, window_s=5)
    assert serve(b, clock)
    refused = b.decide(now=clock(), usage=ONE)
    by_dim = {s.dimension: s.remaining for s in refused.states}
    assert by_dim == {"input_tokens": 5, "output_tokens": 95}
    assert refused.retry_at == pytest.approx(T0 + 5)


def test_utilization_is_the_fullest_dimension() -> None:
    clock, b = ManualClock(T0), bucket(requests=4, tokens=1000, window_s=5)
    assert b.commit(now=clock(), usage=ONE, key_fingerprint="f").utilization == pytest.approx(0.25)


def test_report_is_computed_from_what_was_served_under_the_limit_in_force() -> None:
    clock, b = ManualClock(T0), bucket(requests=3, window_s=10)
    for _ in range(3):
        assert serve(b, clock)
    # Lowering the cap mid-window does not make past requests "over the limit": each served
    # request is judged by the limit in force when it was served.
    b.limit = WindowLimit(requests=1, window_s=10)
    assert not serve(b, clock)
    assert b.served_over_limit() == 0


def key(secret: str, *, kind: str = "api_key") -> Credential:
    return Credential(secret=secret, scheme="x-api-key", kind=kind)


def test_most_specific_rule_wins_exact_then_longest_prefix_then_catch_all() -> None:
    config = EmulatorConfig(
        limits=[
            LimitRule(requests=100),
            LimitRule(key_prefix="sk-a", requests=10),
            LimitRule(key_prefix="sk-ab", requests=5),
            LimitRule(key="sk-abc-exact", requests=1),
        ]
    )
    state = EmulatorState(config=config, clock=ManualClock(T0))
    assert [
        state.limit_rule(key(k)).requests for k in ("sk-abc-exact", "sk-abz", "sk-az", "x")
    ] == [
        1,
        5,
        10,
        100,
    ]


def test_config_never_holds_a_full_key() -> None:
    rule = LimitRule(key="sk-ant-api03-secret-value-1234", requests=1)
    assert rule.key is None and rule.key_fingerprint is not None
    assert "secret-value" not in rule.model_dump_json()
    with pytest.raises(ValueError, match="different keys"):
        LimitRule(key="a-key", key_fingerprint="0000000000000000")


def admit(state: EmulatorState, secret: str) -> str:
    return state.admit(provider="anthropic", credential=key(secret), usage=ONE).kind


def test_a_group_shares_one_window_between_its_keys() -> None:
    config = EmulatorConfig(limits=[LimitRule(key_prefix="org1-", group="org1", requests=3)])
    state = EmulatorState(config=config, clock=ManualClock(T0))
    kinds = [admit(state, k) for k in ("org1-a", "org1-b", "org1-c", "org1-d", "org1-a")]
    assert kinds == ["admitted"] * 3 + ["limited"] * 2
    (report,) = state.bucket_reports()
    assert report.bucket_id == "group:org1" and report.windows[0].requests == 3
    assert len(report.windows[0].keys) == 3


def test_the_ip_limit_spans_every_key_and_a_refusal_consumes_nothing() -> None:
    config = EmulatorConfig(
        ip_limit=WindowLimit(requests=3, window_s=10),
        limits=[LimitRule(key="tight", requests=1)],
    )
    clock = ManualClock(T0)
    state = EmulatorState(config=config, clock=clock)
    assert [admit(state, k) for k in ("tight", "tight", "a", "b", "c")] == [
        "admitted",
        "limited",  # the key's own window refused it: the IP window must not count it
        "admitted",
        "admitted",
        "ip_limited",
    ]
    clock.advance(10)
    assert admit(state, "c") == "admitted"


def test_accepted_keys_reject_the_rest() -> None:
    config = EmulatorConfig(accepted_keys=[KeyMatch(key_prefix="sk-good")])
    state = EmulatorState(config=config, clock=ManualClock(T0))
    assert admit(state, "sk-good-1") == "admitted"
    assert admit(state, "sk-bad-1") == "unauthorized"


def fire(state: EmulatorState, secret: str, provider: str = "anthropic") -> str | None:
    verdict = state.admit(provider=provider, credential=key(secret), usage=ONE)
    return verdict.fault.kind if verdict.fault else None


def test_fault_fires_for_the_next_n_requests_then_stops() -> None:
    config = EmulatorConfig(faults=[FaultRule(key_prefix="sk-f", kind="overloaded", times=2)])
    state = EmulatorState(config=config, clock=ManualClock(T0))
    assert [
        fire(state, "sk-f1"),
        fire(state, "sk-other"),
        fire(state, "sk-f2"),
        fire(state, "sk-f1"),
    ] == [
        "overloaded",
        None,
        "overloaded",
        None,
    ]


def test_probabilistic_fault_is_reproducible_from_its_seed() -> None:
    rule = FaultRule(kind="missing_headers", probability=0.3, seed=7)
    runs = []
    for _ in range(2):
        state = EmulatorState(config=EmulatorConfig(faults=[rule]), clock=ManualClock(T0))
        runs.append([fire(state, "k") is not None for _ in range(200)])
    assert runs[0] == runs[1]
    assert 30 < sum(runs[0]) < 90  # ~60 of 200


def test_faults_only_fire_for_a_provider_that_can_express_them() -> None:
    config = EmulatorConfig(
        faults=[FaultRule(kind="insufficient_quota"), FaultRule(kind="spend_limit")]
    )
    state = EmulatorState(config=config, clock=ManualClock(T0))
    assert fire(state, "k", "openai") == "insufficient_quota"
    assert fire(state, "k", "anthropic") == "spend_limit"


def test_runtime_limit_change_keeps_the_window_and_applies_the_new_cap() -> None:
    clock = ManualClock(T0)
    state = EmulatorState(config=EmulatorConfig(limits=[LimitRule(requests=5)]), clock=clock)
    assert admit(state, "k") == "admitted"
    state.set_limits(limits=[LimitRule(requests=1, window_s=60)], ip_limit=None)
    assert admit(state, "k") == "limited"
    state.reset()
    assert admit(state, "k") == "admitted"
    state.reset(restore_config=True)
    assert [admit(state, "k") for _ in range(5)] == ["admitted"] * 5
