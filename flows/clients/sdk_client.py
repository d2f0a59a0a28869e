"""`keyrelay_client`: an official async SDK client on a leased key, for the length of a block.

    async with keyrelay_client("anthropic", holder="billing-agent") as client:
        message = await client.messages.create(model=..., max_tokens=1024, messages=[...])

- The key is leased with `flows.leasing.leased_key`: renewed while the block runs, released when
  it ends, and the block is cancelled (`LeaseLost`) if the lease cannot be kept.
- The client is `anthropic.AsyncAnthropic` / `openai.AsyncOpenAI` with `max_retries=0` (the SDKs
  would otherwise retry 429s, and sleep for `retry-after`, behind the pool's back), the base URL
  the SDK's own variable gives (`ANTHROPIC_BASE_URL` / `OPENAI_BASE_URL`) unless `base_url` is
  given, and an HTTP client whose `response` hook hands every answer (status, headers, and the
  body of an error) to `Keystore.record_response`: the pool learns each bucket's remaining and
  reset from successes too, and stops leasing a key whose bucket is spent.
- An SDK error that leaves the block becomes a `CallFailed` (errors.py), told to the keystore
  first (a rejected key is benched, a limit the response hook could not record cools the key)
  and raised after the client is closed and before the lease is released, with no chain back to
  the SDK exception. `NoKeyAvailable` from the lease is raised as is.

Calls that the block catches itself are still recorded; only what leaves the block is
translated. Streams must be consumed inside the block.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, overload

from prefect.context import FlowRunContext, TaskRunContext

from flows.blocking import in_thread
from flows.clients.errors import CallFailed
from flows.clients.refusals import RecordedAnswer, SdkFailure, classify, raise_unchained
from flows.executors.base import ProviderResponse
from flows.executors.redact import Redactor
from flows.leasing import leased_key
from flows.responses import ResponseRecorder
from flows.runtime import flow_keystore
from keystore import InvalidInput, Keystore

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic
    from openai import AsyncOpenAI

__all__ = ["ClientProvider", "keyrelay_client"]

ClientProvider = Literal["anthropic", "openai"]
_SDK_CLIENTS: dict[str, str] = {"anthropic": "AsyncAnthropic", "openai": "AsyncOpenAI"}

log = logging.getLogger(__name__)


@overload
def keyrelay_client(
    provider: Literal["anthropic"],
    *,
    holder: str,
    input_tokens: int | None = None,
    base_url: str | None = None,
    timeout_s: float | None = None,
    ttl_s: float | None = None,
    run_id: str | None = None,
    store: Keystore | None = None,
) -> AbstractAsyncContextManager[AsyncAnthropic]: ...


@overload
def keyrelay_client(
    provider: Literal["openai"],
    *,
    holder: str,
    input_tokens: int | None = None,
    base_url: str | None = None,
    timeout_s: float | None = None,
    ttl_s: float | None = None,
    run_id: str | None = None,
    store: Keystore | None = None,
) -> AbstractAsyncContextManager[AsyncOpenAI]: ...


def keyrelay_client(
    provider: ClientProvider,
    *,
    holder: str,
    input_tokens: int | None = None,
    base_url: str | None = None,
    timeout_s: float | None = None,
    ttl_s: float | None = None,
    run_id: str | None = None,
    store: Keystore | None = None,
) -> AbstractAsyncContextManager[Any]:
    """An SDK client for `provider` on a key leased for the block.

    `holder`: who holds the lease (shown by `keyrelay keys status` and the pool page);
    `input_tokens`: the request's estimated size, so a key whose token bucket cannot hold it is
    passed over; `timeout_s`: the SDK's timeout (its default otherwise); `run_id`: what the
    keystore's audit rows name (default: the current Prefect flow run, else `holder`).

    Raises `NoKeyAvailable` when no key can be leased, `CallFailed` (a `KeyRefused`,
    `ProviderBusy` or `RequestRefused`) when an SDK error leaves the block, and `LeaseLost`
    when the block was cancelled because its lease could not be kept."""
    if provider not in _SDK_CLIENTS:
        raise InvalidInput(f"provider: must be one of {', '.join(_SDK_CLIENTS)}")
    if timeout_s is not None and timeout_s <= 0:
        raise InvalidInput("timeout_s: must be greater than 0")
    return _keyed_client(
        provider,
        holder=holder,
        input_tokens=input_tokens,
        base_url=base_url,
        timeout_s=timeout_s,
        ttl_s=ttl_s,
        run_id=run_id,
        store=store,
    )


class _ResponseHook:
    """The HTTP client's `response` event hook: each answer to the keystore as it arrives. A
    keystore that cannot take it is logged, not raised: the SDK would turn any error raised
    here into a connection error and lose the provider's answer."""

    def __init__(self, recorder: ResponseRecorder, store: Keystore, key_id: int) -> None:
        self._recorder, self._store, self._key_id = recorder, store, key_id
        self.last: RecordedAnswer | None = None

    async def __call__(self, response: Any) -> None:
        status: int = response.status_code
        body = await response.aread() if status >= 400 else None  # a success may be a stream
        headers = dict(response.headers)
        self._recorder.refusal = None
        try:
            await self._recorder(ProviderResponse(status, headers, self._store.now(), body))
        except Exception:
            log.exception("could not record a response on key %s", self._key_id)
            self.last = None
            return
        self.last = RecordedAnswer(status, headers, self._recorder.refusal)


def _current_run_id() -> str | None:
    task = TaskRunContext.get()
    if task is not None and task.task_run.flow_run_id is not None:
        return str(task.task_run.flow_run_id)
    flow = FlowRunContext.get()
    if flow is not None and flow.flow_run is not None:
        return str(flow.flow_run.id)
    return None


@asynccontextmanager
async def _keyed_client(
    provider: ClientProvider,
    *,
    holder: str,
    input_tokens: int | None,
    base_url: str | None,
    timeout_s: float | None,
    ttl_s: float | None,
    run_id: str | None,
    store: Keystore | None,
) -> AsyncIterator[Any]:
    sdk = importlib.import_module(provider)  # one provider's SDK does not load the other's
    store = store or flow_keystore()
    run = run_id or _current_run_id() or holder
    async with leased_key(
        provider, holder=holder, ttl_s=ttl_s, store=store, input_tokens=input_tokens
    ) as lease:
        recorder = ResponseRecorder(store, key_id=lease.key_id, provider=provider, run_id=run)
        hook = _ResponseHook(recorder, store, lease.key_id)
        secret = lease.secret()
        redactor = Redactor(secret)
        options: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        failure: SdkFailure | None = None
        async with getattr(sdk, _SDK_CLIENTS[provider])(
            api_key=secret,
            base_url=base_url,
            max_retries=0,
            http_client=sdk.DefaultAsyncHttpxClient(event_hooks={"response": [hook]}),
            **options,
        ) as client:
            del secret
            try:
                yield client
            except sdk.APIError as exc:
                failure = SdkFailure.of(exc, last_recorded=hook.last)
        if failure is not None:
            outcome: BaseException
            try:
                outcome = await _settle(
                    failure,
                    store=store,
                    provider=provider,
                    key_id=lease.key_id,
                    redactor=redactor,
                    run_id=run,
                )
            except BaseException as exc:  # raised below, unchained like the rest
                outcome = exc
            raise_unchained(outcome)


async def _settle(
    failure: SdkFailure,
    *,
    store: Keystore,
    provider: ClientProvider,
    key_id: int,
    redactor: Redactor,
    run_id: str,
) -> CallFailed:
    """The error to raise, once the keystore knows what it must (before the lease goes back)."""
    error = classify(
        failure, provider=provider, key_id=key_id, redactor=redactor, received_at=store.now()
    )
    if error.kind == "key_rejected":
        reason = f"rejected by the provider: {error.message}"
        await in_thread(store.mark_unusable, key_id, reason, run_id=run_id)
    elif error.signal is not None and error.signal.cools_key and failure.recorded_signal is None:
        # a limit only the SDK saw (inside a stream), or one the response hook could not record
        await in_thread(store.mark_limited, key_id, error.signal, run_id=run_id)
    return error
