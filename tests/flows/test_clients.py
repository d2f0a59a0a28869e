"""`keyrelay_client` against the emulator over real sockets, inside Prefect tasks and outside:
answers recorded, refusals turned into keyrelay's errors (the keystore told first), the retry
condition rotating to the next key, and no secret in any error or in what Prefect keeps."""

from __future__ import annotations

import pickle
import traceback
import uuid
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from prefect import flow, task
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_HOME

from api.emulator import EmulatorConfig, FaultRule, KeyMatch, LimitRule, fingerprint
from api.emulator import serve_emulator as start_emulator
from flows.clients import (
    CallFailed,
    KeyRefused,
    ProviderBusy,
    RequestRefused,
    RetryOnRefusal,
    defer_until,
    keyrelay_client,
    retry_on_refusal,
)
from flows.retry_policy import RetryPolicy
from keystore import NoKeyAvailable
from tests.flows.support import SECRETS, FlowEnv, PrefectServer, database_text, files_text

pytestmark = pytest.mark.anyio

PROVIDERS = ["anthropic", "openai"]
PREFIX = {"anthropic": "sk-ant-api03-", "openai": "sk-proj-"}
# Backoffs short enough for a test: a busy sdk is retried after 0.2-0.4 s.
QUICK = RetryPolicy(first_delay_s=0.4, max_delay_s=0.4, inline_attempts=1, max_attempts=1)


def add_key(env: FlowEnv, name: str, sdk: str, **fields: Any) -> tuple[int, str]:
    """A key (id, secret) whose secret starts with `<sdk prefix><name>-`."""
    secret = f"{PREFIX[sdk]}{name}-{uuid.uuid4().hex}SECRET"
    SECRETS.add(secret)  # tests/flows/test_secrets_scan.py looks for it in Prefect's database too
    key = env.store.add_key(name=name, provider=sdk, secret=secret, **fields)
    return key.id, secret


async def ask(client: Any, sdk: str, text: str = "hello") -> str:
    if sdk == "anthropic":
        message = await client.messages.create(
            model="claude-test", max_tokens=64, messages=[{"role": "user", "content": text}]
        )
        return str(message.content[0].text)
    completion = await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": text}]
    )
    return str(completion.choices[0].message.content)


async def spend_outside(env: FlowEnv, sdk: str, secret: str) -> None:
    """Another application uses the key: the emulator's window is spent, the keystore
    does not know."""
    if sdk == "anthropic":
        async with anthropic.AsyncAnthropic(
            api_key=secret, base_url=env.emulator.base_url, max_retries=0
        ) as raw:
            await ask(raw, sdk)
    else:
        async with openai.AsyncOpenAI(
            api_key=secret, base_url=env.emulator.openai_base_url, max_retries=0
        ) as raw:
            await ask(raw, sdk)


@task(retries=1, retry_condition_fn=retry_on_refusal)
async def ask_task(sdk: str) -> str:
    async with keyrelay_client(sdk, holder="test ask_task") as client:  # type: ignore[call-overload]
        return await ask(client, sdk)


@flow
async def ask_flow(sdk: str, backoff: RetryPolicy | None = None) -> str:
    attempt = ask_task
    if backoff is not None:
        attempt = ask_task.with_options(retry_condition_fn=RetryOnRefusal(backoff=backoff))
    return await attempt(sdk)


@flow
async def refused_flow(sdk: str) -> str:
    """Both keys refuse: the task gives up after one retry; the flow keeps what it raised."""
    try:
        await ask_task(sdk)
    except KeyRefused as refused:
        return f"{type(refused).__name__} {refused.kind} key {refused.key_id}"
    return "served"


def served_log(env: FlowEnv) -> list[tuple[int, str | None]]:
    return [(e.status, e.key_fingerprint) for e in env.emulator.admin.log()]


@pytest.mark.parametrize("sdk", PROVIDERS)
async def test_a_call_is_served_on_a_leased_key_and_its_limits_recorded(
    flow_env: FlowEnv, sdk: str
) -> None:
    key, secret = add_key(flow_env, "a", sdk)
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix=PREFIX[sdk], requests=10, tokens=100_000, window_s=60)]
    )
    async with keyrelay_client(sdk, holder="test holder") as client:  # type: ignore[call-overload]
        assert client.max_retries == 0
        wanted = flow_env.env["ANTHROPIC_BASE_URL" if sdk == "anthropic" else "OPENAI_BASE_URL"]
        assert str(client.base_url).rstrip("/") == wanted
        assert [lease.holder for lease in flow_env.store.active_leases(sdk)] == ["test holder"]
        reply = await ask(client, sdk)
    assert reply.startswith("reply to")
    assert flow_env.store.active_leases(sdk) == []
    assert served_log(flow_env) == [(200, fingerprint(secret))]
    buckets = {b.bucket: b for b in flow_env.store.limits(sdk) if b.key_id == key}
    assert (buckets["requests"].limit, buckets["requests"].remaining) == (10, 9)
    assert buckets["tokens"].limit == 100_000
    assert buckets["tokens"].remaining is not None and buckets["tokens"].remaining < 100_000


@pytest.mark.parametrize("sdk", PROVIDERS)
async def test_a_429_rotates_to_the_next_key_within_one_task_retry(
    flow_env: FlowEnv, sdk: str
) -> None:
    a, secret_a = add_key(flow_env, "a", sdk, priority=1)
    b, secret_b = add_key(flow_env, "b", sdk, priority=2)
    flow_env.emulator.admin.set_limits([LimitRule(key_prefix=PREFIX[sdk], requests=1, window_s=60)])
    await spend_outside(flow_env, sdk, secret_a)

    reply = await ask_flow(sdk)

    assert reply.startswith("reply to")
    assert served_log(flow_env) == [
        (200, fingerprint(secret_a)),  # the other application
        (429, fingerprint(secret_a)),  # the first attempt
        (200, fingerprint(secret_b)),  # its one retry, on the next key
    ]
    cooling = flow_env.store.get_key(a)
    assert cooling.state == "cooling" and cooling.cooling_until is not None
    limited = flow_env.store.audit_events(type="key_rate_limited")
    assert [e.key_id for e in limited] == [a]
    # the 200 taught the keystore that b's one request is spent too
    requests = {x.key_id: x for x in flow_env.store.limits(sdk) if x.bucket == "requests"}
    assert requests[b].remaining == 0
    assert flow_env.store.active_leases(sdk) == []


@pytest.mark.parametrize("sdk", PROVIDERS)
async def test_a_rejected_key_is_benched_and_the_retry_takes_another(
    flow_env: FlowEnv, sdk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, secret_bad = add_key(flow_env, "bad", sdk, priority=1)
    _, secret_good = add_key(flow_env, "good", sdk, priority=2)
    only_good = EmulatorConfig(accepted_keys=[KeyMatch(key_prefix=f"{PREFIX[sdk]}good-")])
    with start_emulator(only_good) as strict:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", strict.base_url)
        monkeypatch.setenv("OPENAI_BASE_URL", strict.openai_base_url)
        reply = await ask_flow(sdk)
        log = [(e.status, e.key_fingerprint) for e in strict.admin.log()]
    assert reply.startswith("reply to")
    assert log == [(401, fingerprint(secret_bad)), (200, fingerprint(secret_good))]
    benched = flow_env.store.get_key(bad)
    assert benched.state == "unusable"


@pytest.mark.parametrize("sdk", PROVIDERS)
async def test_an_overloaded_provider_is_retried_after_a_backoff(
    flow_env: FlowEnv, sdk: str
) -> None:
    key, secret = add_key(flow_env, "a", sdk)
    flow_env.emulator.admin.set_faults([FaultRule(kind="overloaded", times=1)])

    reply = await ask_flow(sdk, backoff=QUICK)

    assert reply.startswith("reply to")
    log = flow_env.emulator.admin.log()
    assert [(e.status, e.key_fingerprint) for e in log] == [
        (529 if sdk == "anthropic" else 503, fingerprint(secret)),
        (200, fingerprint(secret)),  # an overload is nobody's key's fault: same key, later
    ]
    assert log[1].at - log[0].at >= QUICK.max_delay_s / 2
    assert flow_env.store.get_key(key).state == "available"


@flow
async def asks_twice(sdk: str) -> list[str]:
    """What a user's flow does: a spent pool is waited out with `defer_until`, then the call
    goes out again (a deployed run would give its worker back instead: test_clients_example)."""
    replies = []
    for _ in range(2):
        try:
            replies.append(await ask_task(sdk))
        except NoKeyAvailable as spent:
            await defer_until(spent)
            replies.append(await ask_task(sdk))
    return replies


@pytest.mark.parametrize("sdk", PROVIDERS)
async def test_a_spent_pool_is_waited_out_and_the_call_goes_out_after_the_reset(
    flow_env: FlowEnv, sdk: str
) -> None:
    add_key(flow_env, "a", sdk)
    flow_env.store.update_config(inline_wait_max_s=10)  # not deployed: waits in-process anyway
    flow_env.emulator.admin.set_limits([LimitRule(key_prefix=PREFIX[sdk], requests=1, window_s=3)])

    replies = await asks_twice(sdk)

    assert len(replies) == 2 and all(r.startswith("reply to") for r in replies)
    log = flow_env.emulator.admin.log()
    assert [e.status for e in log] == [200, 200]  # the answer said 0 left: nothing sent to a 429
    assert log[1].at - log[0].at >= 2  # the second call waited for the window's reset


async def test_no_key_to_lease_raises_no_key_available_as_is(flow_env: FlowEnv) -> None:
    with pytest.raises(NoKeyAvailable) as raised:
        async with keyrelay_client("openai", holder="test"):
            pytest.fail("the block must not run without a key")
    assert raised.value.provider == "openai"
    assert raised.value.__context__ is None


REFUSALS = [
    # fault, class, kind (missing_headers: a 429 that names no reset)
    ("missing_headers", KeyRefused, "rate_limit"),
    ("overloaded", ProviderBusy, "overloaded"),
    ("server_error", ProviderBusy, "server_error"),
    ("request_too_large", RequestRefused, "request_too_large"),
]


@pytest.mark.parametrize("sdk", PROVIDERS)
@pytest.mark.parametrize(("fault", "error", "kind"), REFUSALS)
async def test_a_refusal_raises_our_error_with_nothing_of_the_secret(
    flow_env: FlowEnv, sdk: str, fault: str, error: type[CallFailed], kind: str
) -> None:
    key, secret = add_key(flow_env, "a", sdk)
    flow_env.emulator.admin.set_faults([FaultRule(kind=fault, times=1)])  # type: ignore[arg-type]

    with pytest.raises(CallFailed) as raised:
        async with keyrelay_client(sdk, holder="test") as client:  # type: ignore[call-overload]
            await ask(client, sdk)

    refused = raised.value
    assert type(refused) is error and refused.kind == kind
    assert (refused.provider, refused.key_id) == (sdk, key)
    assert refused.__context__ is None and refused.__cause__ is None
    again = pickle.loads(pickle.dumps(refused))
    assert type(again) is error and again.kind == kind and again.key_id == key
    shown = [
        str(refused),
        repr(refused),
        "".join(traceback.format_exception(refused)),
        repr(pickle.dumps(refused)),
        repr(refused.signal),
    ]
    for text in shown:
        assert secret not in text and secret[-20:] not in text
    assert flow_env.store.active_leases(sdk) == []
    marked = flow_env.store.get_key(key)
    assert marked.state == ("cooling" if error is KeyRefused else "available")


@pytest.mark.parametrize("sdk", PROVIDERS)
async def test_a_refused_task_leaves_no_secret_in_prefect(
    flow_env: FlowEnv,
    prefect_server: PrefectServer,
    sdk: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, secret_a = add_key(flow_env, "a", sdk, priority=1)
    _, secret_b = add_key(flow_env, "b", sdk, priority=2)
    flow_env.emulator.admin.set_faults([FaultRule(kind="missing_headers", times=2)])

    outcome = await refused_flow(sdk)
    await APILogHandler.aflush()

    assert outcome.startswith("KeyRefused rate_limit key")
    places = {
        "prefect database": database_text(prefect_server.database),
        "prefect home (results, logs)": files_text(Path(str(PREFECT_HOME.value()))),
        "captured logs": caplog.text,
    }
    # the scan does see the failed attempts: their states and the engine's log lines
    assert "KeyRefused" in places["prefect database"]
    assert f"{sdk} key {a}: HTTP 429 rate_limit" in places["prefect database"]
    for where, text in places.items():
        for secret in (secret_a, secret_b):
            assert secret not in text, f"a secret leaked into the {where}"
            assert secret[-20:] not in text, f"a secret's tail leaked into the {where}"


async def test_an_overload_inside_a_200_stream_is_a_busy_provider(flow_env: FlowEnv) -> None:
    key, secret = add_key(flow_env, "a", "anthropic")
    flow_env.emulator.admin.set_limits(
        [LimitRule(key_prefix="sk-ant-api03-", requests=10, window_s=60)]
    )
    flow_env.emulator.admin.set_faults([FaultRule(kind="stream_overloaded", times=1)])
    request = {
        "model": "claude-test",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }

    with pytest.raises(ProviderBusy) as raised:
        async with (
            keyrelay_client("anthropic", holder="test") as client,
            client.messages.stream(**request) as stream,  # type: ignore[arg-type]
        ):
            await stream.get_final_message()
    assert raised.value.kind == "overloaded" and raised.value.status == 200
    assert raised.value.__context__ is None
    assert flow_env.store.get_key(key).state == "available"  # nobody's key's fault

    async with (
        keyrelay_client("anthropic", holder="test") as client,
        client.messages.stream(**request) as stream,  # type: ignore[arg-type]
    ):
        message = await stream.get_final_message()
    assert message.content
    assert served_log(flow_env) == [(200, fingerprint(secret))] * 2
    # a streamed success's headers count too (the faulted request was not counted against it)
    [requests] = [b for b in flow_env.store.limits("anthropic") if b.bucket == "requests"]
    assert requests.remaining == 9
    assert requests.observed_at.timestamp() >= flow_env.emulator.admin.log()[1].at


async def test_the_sdk_exception_left_behind_no_longer_holds_the_key(flow_env: FlowEnv) -> None:
    _, secret = add_key(flow_env, "a", "anthropic")
    flow_env.emulator.admin.set_faults([FaultRule(kind="missing_headers", times=1)])
    kept: list[BaseException] = []

    with pytest.raises(KeyRefused):
        async with keyrelay_client("anthropic", holder="test") as client:
            try:
                await ask(client, "anthropic")
            except anthropic.RateLimitError as sdk_error:
                kept.append(sdk_error)  # whatever still refers to it (a tracker, a debugger)
                raise
    [sdk_error] = kept
    assert isinstance(sdk_error, anthropic.APIStatusError)
    assert "x-api-key" not in sdk_error.request.headers
    assert secret not in repr(dict(sdk_error.response.request.headers))


async def test_other_errors_leave_the_block_unchanged(flow_env: FlowEnv) -> None:
    add_key(flow_env, "a", "openai")
    with pytest.raises(ValueError, match="the user's own"):
        async with keyrelay_client("openai", holder="test"):
            raise ValueError("the user's own")
    assert flow_env.store.active_leases("openai") == []


async def test_defer_until_belongs_to_a_flow_body(flow_env: FlowEnv) -> None:
    from datetime import UTC, datetime

    from flows.clients import defer_until

    spent = NoKeyAvailable("anthropic", reason="all_cooling", retry_at=datetime.now(UTC))
    with pytest.raises(RuntimeError, match="flow body"):
        await defer_until(spent)

    @task
    async def in_a_task() -> None:
        await defer_until(spent)

    @flow
    async def calls_it_from_a_task() -> str:
        try:
            await in_a_task()
        except RuntimeError as wrong:
            return str(wrong)
        return "deferred"

    assert "not from a task" in await calls_it_from_a_task()
