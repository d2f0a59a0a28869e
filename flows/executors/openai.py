"""The `openai` agent: one Chat Completions call per turn with the official async SDK.

Built per turn from the lease with `max_retries=0` (the SDK retries 429s, `insufficient_quota`
included, by default) and closed after the turn; headers come from the raw response.

Base URL: the `base_url` option, else `OPENAI_BASE_URL`, else the SDK's default. The checkpoint
has the same shape as the `anthropic` agent's (conversation.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import anyio
import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from flows.executors.base import TurnOutcome, TurnResult, check_prompt
from flows.executors.conversation import conversation_from, extended
from flows.executors.errors import ExecutorError
from flows.executors.http_failures import connection_failure, error_body, status_failure
from flows.executors.redact import Redactor
from keystore.clock import Clock, utcnow
from keystore.errors import InvalidInput
from keystore.lease import Lease
from keystore.ratelimits import RateLimitSignal, parse_utilization

__all__ = ["DEFAULT_OPENAI_MODEL", "OpenAIExecutor"]

DEFAULT_OPENAI_MODEL = "gpt-5.5"


@dataclass(frozen=True)
class _Reply:
    completion: ChatCompletion
    headers: Mapping[str, str]


class OpenAIExecutor:
    agent = "openai"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        default_model: str = DEFAULT_OPENAI_MODEL,
        max_tokens: int | None = None,
        system: str | None = None,
        timeout_s: float = 600.0,
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

    def __repr__(self) -> str:
        return f"OpenAIExecutor(base_url={self._base_url()!r})"

    def _base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    async def run_turn(
        self,
        lease: Lease,
        *,
        prompt: str,
        model: str | None,
        checkpoint: dict[str, Any] | None,
    ) -> TurnOutcome:
        check_prompt(prompt)
        history = conversation_from(checkpoint)
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        messages = [*system, *history, {"role": "user", "content": prompt}]
        secret = lease.secret()
        redactor = Redactor(secret)
        outcome = await self._call(
            secret,
            model=model or self.default_model,
            messages=messages,
            lease=lease,
            redactor=redactor,
        )
        if isinstance(outcome, ExecutorError):
            raise outcome  # outside `except`: the SDK exception (and its request) stays behind
        if isinstance(outcome, RateLimitSignal):
            return outcome
        completion = outcome.completion
        choice = completion.choices[0] if completion.choices else None
        text = redactor.text((choice.message.content if choice else None) or "")
        usage = completion.usage
        return TurnResult(
            text=text,
            checkpoint=redactor.value(extended(history, prompt=prompt, reply=text)),
            utilization=parse_utilization("openai", headers=outcome.headers),
            usage=(
                {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
                if usage is not None
                else {}
            ),
        )

    async def _call(
        self,
        secret: str,
        *,
        model: str,
        messages: list[dict[str, Any]],
        lease: Lease,
        redactor: Redactor,
    ) -> _Reply | RateLimitSignal | ExecutorError:
        params = cast(Iterable[ChatCompletionMessageParam], messages)
        max_tokens: int | openai.Omit = (
            self.max_tokens if self.max_tokens is not None else openai.omit
        )
        async with openai.AsyncOpenAI(
            api_key=secret, base_url=self._base_url(), max_retries=0, timeout=self.timeout_s
        ) as client:
            try:
                with anyio.fail_after(self.timeout_s):  # the SDK's timeout is per read
                    raw = await client.chat.completions.with_raw_response.create(
                        model=model, messages=params, max_completion_tokens=max_tokens
                    )
                    return _Reply(raw.parse(), raw.headers)
            except openai.APIStatusError as exc:
                return status_failure(
                    "openai",
                    status=exc.status_code,
                    headers=exc.response.headers,
                    body=error_body(status=exc.status_code, response=exc.response, parsed=exc.body),
                    received_at=self._clock(),
                    key_id=lease.key_id,
                    request_id=exc.request_id,
                    redactor=redactor,
                )
            except TimeoutError:
                return connection_failure(
                    "openai",
                    timed_out=True,
                    detail=f"no complete answer within {self.timeout_s:g} s",
                    key_id=lease.key_id,
                    redactor=redactor,
                )
            except openai.APIConnectionError as exc:  # APITimeoutError is a subclass
                return connection_failure(
                    "openai",
                    timed_out=isinstance(exc, openai.APITimeoutError),
                    detail=str(exc),
                    key_id=lease.key_id,
                    redactor=redactor,
                )
