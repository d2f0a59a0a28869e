"""The `openai` agent: one Chat Completions call per turn with the official async SDK.

Built per turn from the lease with `max_retries=0` (the SDK retries 429s, `insufficient_quota`
included, by default) and closed after the turn; headers come from the raw response.

Base URL: the `base_url` option, else `OPENAI_BASE_URL`, else the SDK's default. The checkpoint
has the same shape as the `anthropic` agent's (conversation.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import anyio
import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from flows.executors.http_base import Failed, HttpExecutor
from flows.executors.redact import Redactor
from keystore.clock import Clock, utcnow
from keystore.lease import Lease

__all__ = ["DEFAULT_OPENAI_MODEL", "OpenAIExecutor"]

DEFAULT_OPENAI_MODEL = "gpt-5.5"


@dataclass(frozen=True)
class _Reply:
    completion: ChatCompletion
    headers: Mapping[str, str]


class OpenAIExecutor(HttpExecutor):
    agent = "openai"
    base_url_env = "OPENAI_BASE_URL"

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
        super().__init__(
            base_url=base_url,
            default_model=default_model,
            max_tokens=max_tokens,
            system=system,
            timeout_s=timeout_s,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"OpenAIExecutor(base_url={self._base_url()!r})"

    def _messages(self, history: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": self.system}] if self.system is not None else []
        return [*system, *super()._messages(history, prompt)]

    def _reply_text(self, reply: _Reply) -> str:
        choice = reply.completion.choices[0] if reply.completion.choices else None
        return (choice.message.content if choice else None) or ""

    def _usage(self, reply: _Reply) -> dict[str, int]:
        usage = reply.completion.usage
        if usage is None:
            return {}
        return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}

    async def _call(
        self,
        secret: str,
        *,
        model: str,
        messages: list[dict[str, Any]],
        lease: Lease,
        redactor: Redactor,
    ) -> _Reply | Failed:
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
            except (openai.APIStatusError, openai.APIConnectionError, TimeoutError) as exc:
                # APITimeoutError is an APIConnectionError; TimeoutError is our own deadline
                return self._failure(exc, lease=lease, redactor=redactor)
