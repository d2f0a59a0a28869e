"""An SDK exception, turned into keyrelay's own error without keeping anything of it.

Both official SDKs raise `APIStatusError` (status, response, parsed body, request id) for an
answer that was not a success, `APIConnectionError` / `APITimeoutError` when there was none, and
a plain `APIError` for an error inside a 200 stream. Every one of them holds the request, and the
request's headers hold the key. So:

1. inside the `except` block, `SdkFailure.of(exc)` copies out plain data (status, headers, the
   error body) and strips the credential headers from the exception's request, in case anything
   still reaches it (a debugger, an error tracker that captures frame locals);
2. outside it, `classify` reads the copy with the executors' parsers (flows/executors/
   http_failures.py), the same reading `agent-run` gets;
3. `raise_unchained` raises the result with no `__context__`: a generator context manager is
   resumed while its caller is still handling the SDK exception, so even a `raise` written after
   the `except` block would chain to it (tests/test_clients_retry.py shows both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NoReturn

from flows.clients.errors import CallFailed, FailureKind, call_failed
from flows.executors.errors import (
    ExecutorError,
    KeyRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from flows.executors.http_failures import connection_failure, error_body, status_failure
from flows.executors.redact import Redactor
from keystore import RateLimitSignal

__all__ = ["CREDENTIAL_HEADERS", "RecordedAnswer", "SdkFailure", "classify", "raise_unchained"]

# What the SDKs authenticate with: anthropic `x-api-key` (or a bearer token), openai a bearer.
CREDENTIAL_HEADERS = ("x-api-key", "authorization", "api-key")


@dataclass(frozen=True)
class RecordedAnswer:
    """An answer the response hook gave the keystore, and the refusal the keystore read in it."""

    status: int
    headers: Mapping[str, str] = field(repr=False)
    signal: RateLimitSignal | None

    def is_answer(self, status: int, headers: Mapping[str, str]) -> bool:
        # The same answer, not the same object: the SDK may hand its exception a copy of the
        # response (the OpenAI SDK does). Headers carry the request id and the Date.
        return status == self.status and dict(headers) == dict(self.headers)


@dataclass(frozen=True)
class SdkFailure:
    """What an SDK exception said. `status` None: no answer came (connection, timeout)."""

    status: int | None
    headers: Mapping[str, str] = field(repr=False)
    body: bytes | str | dict[str, Any] | None = field(repr=False)
    request_id: str | None
    timed_out: bool
    detail: str = field(repr=False)  # the SDK's own text, for a call without an answer
    # What the keystore read from this very answer when the response hook recorded it (None:
    # not recorded, or not a limit as far as the headers and error body said).
    recorded_signal: RateLimitSignal | None = None

    @classmethod
    def of(cls, exc: BaseException, *, last_recorded: RecordedAnswer | None) -> SdkFailure:
        """Call inside the `except` block. `last_recorded`: the last answer the response hook
        handed to the keystore, and what the keystore read from it."""
        _strip_credentials(exc)
        response = getattr(exc, "response", None)
        status = getattr(exc, "status_code", None)
        parsed = getattr(exc, "body", None)
        if response is not None and isinstance(status, int):
            body = error_body(status=status, response=response, parsed=parsed)
            headers = dict(response.headers)
            return cls(
                status=status,
                headers=headers,
                body=body if isinstance(body, bytes | str | dict) else None,
                request_id=getattr(exc, "request_id", None),
                timed_out=False,
                detail="",
                recorded_signal=(
                    last_recorded.signal
                    if last_recorded is not None and last_recorded.is_answer(status, headers)
                    else None
                ),
            )
        if parsed is not None:  # an `event: error` inside a 200 stream: the body says what
            return cls(
                status=200,
                headers={},
                body=parsed if isinstance(parsed, bytes | str | dict) else None,
                request_id=None,
                timed_out=False,
                detail="",
            )
        return cls(
            status=None,
            headers={},
            body=None,
            request_id=None,
            timed_out="Timeout" in type(exc).__name__,
            detail=str(exc),
        )


def _strip_credentials(exc: BaseException) -> None:
    response = getattr(exc, "response", None)
    for request in (getattr(exc, "request", None), getattr(response, "request", None)):
        headers = getattr(request, "headers", None)
        if headers is None:
            continue
        for name in CREDENTIAL_HEADERS:
            if name in headers:
                del headers[name]


def classify(
    failure: SdkFailure,
    *,
    provider: Literal["anthropic", "openai"],
    key_id: int,
    redactor: Redactor,
    received_at: datetime,
) -> CallFailed:
    """The error for `failure`. What the keystore read from the same answer, when it did, wins
    over this reading: the key was cooled by that one."""
    if failure.status is None:
        unreachable = connection_failure(
            provider,
            timed_out=failure.timed_out,
            detail=failure.detail,
            key_id=key_id,
            redactor=redactor,
        )
        return _from_executor_error(unreachable, provider=provider, key_id=key_id)
    read = status_failure(
        provider,
        status=failure.status,
        headers=failure.headers,
        body=failure.body,
        received_at=received_at,
        key_id=key_id,
        request_id=failure.request_id,
        redactor=redactor,
    )
    if isinstance(read, ExecutorError):
        return _from_executor_error(read, provider=provider, key_id=key_id)
    signal = failure.recorded_signal or read
    until = signal.resets_at.isoformat(timespec="seconds") if signal.resets_at else "unknown"
    message = (
        f"{provider} key {key_id}: HTTP {failure.status} {signal.kind} ({signal.source}); "
        f"resets at {until}"
    )
    if failure.request_id:
        message += f" (request {failure.request_id})"
    return call_failed(
        signal.kind,
        message,
        provider=provider,
        key_id=key_id,
        status=failure.status,
        request_id=failure.request_id,
        signal=signal,
    )


def _from_executor_error(error: ExecutorError, *, provider: str, key_id: int) -> CallFailed:
    kind: FailureKind
    if isinstance(error, KeyRejected):
        kind = "key_rejected"
    elif isinstance(error, ProviderTimeout):
        kind = "timeout"
    elif isinstance(error, ProviderUnavailable):
        kind = "server_error" if error.status is not None else "unreachable"
    else:  # RequestRejected: another 4xx
        kind = "bad_request"
    return call_failed(
        kind,
        error.message,
        provider=provider,
        key_id=key_id,
        status=error.status,
        request_id=error.request_id,
    )


def raise_unchained(error: BaseException) -> NoReturn:
    """Raise `error` with no `__context__`, whatever exception is being handled around us.

    A `raise` statement chains to the innermost exception being handled, including the
    caller's; a bare `raise` re-raises without chaining again."""
    try:
        raise error
    except BaseException:
        error.__context__ = None
        raise
