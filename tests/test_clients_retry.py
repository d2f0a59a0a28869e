"""`retry_on_refusal` decides from the exception a failed attempt raised (no Prefect server: the
engine hands the condition a `Failed` state holding the exception), and `raise_unchained` leaves
no way back to an SDK exception from the error a context manager raises instead."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect.client.schemas.objects import TaskRun
from prefect.states import Failed

from flows.clients import KeyRefused, ProviderBusy, RequestRefused, RetryOnRefusal
from flows.clients.errors import CallFailed, call_failed
from flows.clients.refusals import raise_unchained
from flows.retry_policy import RetryPolicy
from keystore import LeaseLost, ManualClock, NoKeyAvailable, RateLimitSignal

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 1, 1, tzinfo=UTC)
QUICK = RetryPolicy(first_delay_s=0.2, max_delay_s=0.4, inline_attempts=1, max_attempts=5)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def refusal(kind: Any, *, resets_at: datetime | None = None) -> CallFailed:
    signal = None
    if kind in ("rate_limit", "overloaded", "request_too_large"):
        signal = RateLimitSignal(kind=kind, resets_at=resets_at, retryable=True, source="test")
    message = f"anthropic key 1: {kind}"
    return call_failed(kind, message, provider="anthropic", key_id=1, signal=signal)


def recording(slept: list[float]) -> Callable[[float], Awaitable[None]]:
    """A sleep that only notes how long it was asked to wait."""

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return sleep


def attempt(run_count: int = 1) -> TaskRun:
    return TaskRun(flow_run_id=None, task_key="ask", dynamic_key="0", run_count=run_count)


async def decide(condition: RetryOnRefusal, error: BaseException, *, run_count: int = 1) -> bool:
    # what the engine passes for an exception (prefect/task_engine.py, can_retry)
    return await condition(None, attempt(run_count), Failed(data=error))


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (refusal("rate_limit"), True),
        (refusal("usage_limit"), True),
        (refusal("quota_exhausted"), True),
        (refusal("key_rejected"), True),
        (LeaseLost("lease-1"), True),
        (refusal("request_too_large"), False),
        (refusal("bad_request"), False),
        (NoKeyAvailable("anthropic", reason="all_cooling", retry_at=NOW), False),
        (ValueError("the user's own bug"), False),
    ],
)
async def test_which_failures_are_retried_at_once(error: BaseException, retried: bool) -> None:
    slept: list[float] = []
    condition = RetryOnRefusal(backoff=QUICK, sleep=recording(slept))
    assert await decide(condition, error) is retried
    assert slept == []  # a rotation does not wait


@pytest.mark.parametrize("kind", ["overloaded", "server_error", "unreachable", "timeout"])
async def test_a_busy_provider_is_retried_after_a_backoff(kind: str) -> None:
    slept: list[float] = []
    condition = RetryOnRefusal(backoff=QUICK, rng=random.Random(1), sleep=recording(slept))
    assert await decide(condition, refusal(kind)) is True
    assert len(slept) == 1 and QUICK.first_delay_s / 2 <= slept[0] <= QUICK.max_delay_s, slept


def test_the_backoff_grows_with_the_attempts_and_honours_a_named_reset() -> None:
    clock = ManualClock(NOW)
    policy = RetryPolicy(first_delay_s=1, max_delay_s=60, inline_attempts=6, max_attempts=20)
    condition = RetryOnRefusal(backoff=policy, rng=random.Random(7), clock=clock)
    busy = refusal("overloaded")
    assert isinstance(busy, ProviderBusy)
    assert 0.5 <= condition.delay_s(busy, attempt=1) <= 1
    assert 8 <= condition.delay_s(busy, attempt=5) <= 16
    assert 30 <= condition.delay_s(busy, attempt=9) <= 60
    named = refusal("overloaded", resets_at=NOW + timedelta(seconds=20))
    assert isinstance(named, ProviderBusy)
    assert condition.delay_s(named, attempt=1) == 20  # the provider's retry-after
    far = refusal("overloaded", resets_at=NOW + timedelta(hours=1))
    assert isinstance(far, ProviderBusy)
    assert condition.delay_s(far, attempt=1) == 60  # never beyond the policy's cap


async def test_a_failed_state_the_task_returned_is_not_retried() -> None:
    # read with `_sync=True`: a plain `state.result()` would be a coroutine here
    condition = RetryOnRefusal(backoff=QUICK)
    returned = Failed(data=None, message="the task returned this state")
    assert await condition(None, attempt(), returned) is False


def test_each_kind_has_its_class() -> None:
    assert isinstance(refusal("key_rejected"), KeyRefused)
    assert isinstance(refusal("timeout"), ProviderBusy)
    assert isinstance(refusal("bad_request"), RequestRefused)


class SdkError(Exception):
    """Stands in for an SDK exception: it holds what must not be reachable."""


@asynccontextmanager
async def translating(*, unchained: bool) -> AsyncIterator[None]:
    failure: KeyRefused | None = None
    try:
        yield
    except SdkError:
        refused = refusal("rate_limit")
        assert isinstance(refused, KeyRefused)
        failure = refused
    if failure is not None:
        if unchained:
            raise_unchained(failure)
        raise failure  # after the `except` block, and still chained: the caller is handling it


@pytest.mark.parametrize("unchained", [False, True])
async def test_only_raise_unchained_leaves_the_sdk_exception_behind(unchained: bool) -> None:
    with pytest.raises(KeyRefused) as raised:
        async with translating(unchained=unchained):
            raise SdkError("x-api-key: sk-ant-secret")
    context = raised.value.__context__
    if unchained:
        assert context is None
    else:  # why raise_unchained exists
        assert isinstance(context, SdkError)
