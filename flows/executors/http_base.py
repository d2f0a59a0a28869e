"""What the `anthropic` and `openai` executors share: one SDK call per turn on a client built
from the lease, a text conversation as the checkpoint, and the same failure mapping. A subclass
says how to call its SDK (`_call`) and how to read the reply (`_reply_text`, `_usage`)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

from flows.executors.base import (
    Gate,
    KeepPartial,
    ProviderResponse,
    Report,
    TurnOutcome,
    TurnResult,
    check_prompt,
)
from flows.executors.conversation import conversation_from, extended
from flows.executors.errors import ExecutorError
from flows.executors.http_failures import connection_failure, error_body, status_failure
from flows.executors.redact import Redactor
from keystore.clock import Clock, utcnow
from keystore.errors import InvalidInput
from keystore.lease import Lease
from keystore.ratelimits import RateLimitSignal, parse_utilization

__all__ = ["Failed", "HttpExecutor"]


@dataclass(frozen=True)
class Failed:
    """A call that did not produce a reply: what to return or raise, and the provider's answer
    when there was one (a refused request; none for a connection that failed)."""

    outcome: RateLimitSignal | ExecutorError
    response: ProviderResponse | None


class HttpExecutor(ABC):
    agent: Literal["anthropic", "openai"]
    base_url_env: str  # the standard variable the provider's own SDK honours

    def __init__(
        self,
        *,
        base_url: str | None,
        default_model: str,
        max_tokens: int | None,
        system: str | None,
        timeout_s: float,
        clock: Clock = utcnow,
    ) -> None:
        if max_tokens is not None and max_tokens < 1:
            raise InvalidInput("max_tokens: must be at least 1")
        if timeout_s <= 0:
            raise InvalidInput("timeout_s: must be greater than 0")
        self.base_url = base_url
        self.default_model = default_model
        self.max_tokens = max_tokens
        self.system = system
        self.timeout_s = timeout_s
        self._clock = clock

    def _base_url(self) -> str | None:
        return self.base_url or os.environ.get(self.base_url_env) or None

    def _messages(self, history: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
        return [*history, {"role": "user", "content": prompt}]

    async def run_turn(
        self,
        lease: Lease,
        *,
        prompt: str,
        model: str | None,
        checkpoint: dict[str, Any] | None,
        report: Report | None = None,
        keep_partial: KeepPartial | None = None,  # one call: nothing done before it ends
        gate: Gate | None = None,
    ) -> TurnOutcome:
        check_prompt(prompt)
        if gate is not None and (refused := await gate()) is not None:
            return refused  # the keystore knows this call would be refused: not sent
        history = conversation_from(checkpoint)
        secret = lease.secret()
        redactor = Redactor(secret)
        outcome = await self._call(
            secret,
            model=model or self.default_model,
            messages=self._messages(history, prompt),
            lease=lease,
            redactor=redactor,
        )
        if isinstance(outcome, Failed):
            if outcome.response is not None and report is not None:
                await report(outcome.response)
            if isinstance(outcome.outcome, ExecutorError):
                raise outcome.outcome  # outside `except`: the SDK exception stays behind
            return outcome.outcome
        if report is not None:
            await report(ProviderResponse(200, dict(outcome.headers), self._clock()))
        text = redactor.text(self._reply_text(outcome))
        return TurnResult(
            text=text,
            checkpoint=redactor.value(extended(history, prompt=prompt, reply=text)),
            utilization=parse_utilization(self.agent, headers=outcome.headers),
            usage=self._usage(outcome),
        )

    @abstractmethod
    async def _call(
        self,
        secret: str,
        *,
        model: str,
        messages: list[dict[str, Any]],
        lease: Lease,
        redactor: Redactor,
    ) -> Any:
        """The SDK call: a reply (with `.headers`), or how it `Failed`."""

    def _failure(self, exc: BaseException, *, lease: Lease, redactor: Redactor) -> Failed:
        """Map an SDK exception (both SDKs share the shape: APIStatusError with status, response,
        body and request_id; APIConnectionError; APITimeoutError) or our own deadline."""
        if isinstance(exc, TimeoutError):
            timed_out = connection_failure(
                self.agent,
                timed_out=True,
                key_id=lease.key_id,
                detail=f"no complete answer within {self.timeout_s:g} s",
                redactor=redactor,
            )
            return Failed(timed_out, None)
        response = getattr(exc, "response", None)
        status = getattr(exc, "status_code", None)
        if response is not None and status is not None:
            received_at = self._clock()
            body = error_body(status=status, response=response, parsed=getattr(exc, "body", None))
            answer = ProviderResponse(
                status=status,
                headers=dict(response.headers),
                received_at=received_at,
                body=body if isinstance(body, bytes | str | dict) else None,
            )
            refused = status_failure(
                self.agent,
                status=status,
                headers=answer.headers,
                body=body,
                received_at=received_at,
                key_id=lease.key_id,
                request_id=getattr(exc, "request_id", None),
                redactor=redactor,
            )
            return Failed(refused, answer)
        unreachable = connection_failure(
            self.agent,
            timed_out="Timeout" in type(exc).__name__,
            detail=str(exc),
            key_id=lease.key_id,
            redactor=redactor,
        )
        return Failed(unreachable, None)

    @abstractmethod
    def _reply_text(self, reply: Any) -> str: ...

    @abstractmethod
    def _usage(self, reply: Any) -> dict[str, int]: ...
