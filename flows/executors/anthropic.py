"""The `anthropic` agent: one Messages API call per turn with the official async SDK.

The client is built per turn from the lease (it holds the secret), with `max_retries=0` (the SDK
would otherwise retry 429s and sleep for `retry-after` behind keyrelay's back) and closed after
the turn. Headers are read from the raw response, so utilization is known on success and the
limit signal on failure. With `stream=True` the reply is streamed (needed for very large
`max_tokens`); a stream that breaks off with `event: error` is classified like a status error.

Base URL: the `base_url` option, else `ANTHROPIC_BASE_URL`, else the SDK's default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import anthropic
import anyio
from anthropic.types import Message, MessageParam

from flows.executors.http_base import Failed, HttpExecutor
from flows.executors.redact import Redactor
from keystore.clock import Clock, utcnow
from keystore.lease import Lease

__all__ = ["DEFAULT_ANTHROPIC_MODEL", "AnthropicExecutor"]

DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-5-5"


@dataclass(frozen=True)
class _Reply:
    message: Message
    headers: Mapping[str, str]


class AnthropicExecutor(HttpExecutor):
    agent = "anthropic"
    base_url_env = "ANTHROPIC_BASE_URL"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        default_model: str = DEFAULT_ANTHROPIC_MODEL,
        max_tokens: int = 4096,
        system: str | None = None,
        stream: bool = False,
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
        self.max_tokens: int = max_tokens
        self.stream = stream

    def __repr__(self) -> str:
        return f"AnthropicExecutor(base_url={self._base_url()!r}, stream={self.stream})"

    def _reply_text(self, reply: _Reply) -> str:
        return "".join(block.text for block in reply.message.content if block.type == "text")

    def _usage(self, reply: _Reply) -> dict[str, int]:
        usage = reply.message.usage
        return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}

    async def _call(
        self,
        secret: str,
        *,
        model: str,
        messages: list[dict[str, Any]],
        lease: Lease,
        redactor: Redactor,
    ) -> _Reply | Failed:
        params = cast(Iterable[MessageParam], messages)
        system: str | anthropic.Omit = self.system if self.system is not None else anthropic.omit
        async with anthropic.AsyncAnthropic(
            api_key=secret, base_url=self._base_url(), max_retries=0, timeout=self.timeout_s
        ) as client:
            try:
                with anyio.fail_after(self.timeout_s):  # the SDK's timeout is per read
                    if self.stream:
                        async with client.messages.stream(
                            model=model, max_tokens=self.max_tokens, messages=params, system=system
                        ) as stream:
                            message = await stream.get_final_message()
                            return _Reply(message, stream.response.headers)
                    raw = await client.messages.with_raw_response.create(
                        model=model, max_tokens=self.max_tokens, messages=params, system=system
                    )
                    return _Reply(await raw.parse(), raw.headers)
            except (anthropic.APIStatusError, anthropic.APIConnectionError, TimeoutError) as exc:
                # APITimeoutError is an APIConnectionError; TimeoutError is our own deadline
                return self._failure(exc, lease=lease, redactor=redactor)
