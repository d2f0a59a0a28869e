"""One request/response exchange, as both provider front-ends handle it.

Reads the credential and JSON body, derives the deterministic reply and the request's cost, and
on the way out stamps `Date` (from the emulator's clock, so skew can be scripted) and the request
id, then logs and counts the exchange.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request, Response

from api.emulator.agent import next_move
from api.emulator.agent_script import AgentScript
from api.emulator.headers import http_date
from api.emulator.keys import Credential, read_credential
from api.emulator.replies import (
    Reply,
    estimate_tokens,
    make_reply,
    plain_text_prompt,
    tool_results,
)
from api.emulator.reports import LogEntry
from api.emulator.state import EmulatorState
from api.emulator.windows import Usage

__all__ = ["Exchange"]

Provider = Literal["anthropic", "openai"]
_REQUEST_ID_HEADER = {"anthropic": "request-id", "openai": "x-request-id"}


@dataclass
class Exchange:
    state: EmulatorState
    request: Request
    provider: Provider
    now: float
    request_id: str
    credential: Credential | None
    body: dict[str, Any] | None  # None when the body is not a JSON object
    fault: str | None = None
    reply: Reply | None = field(default=None)

    @classmethod
    async def open(cls, state: EmulatorState, request: Request, *, provider: Provider) -> Exchange:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        now = state.clock()
        if state.config.reply_delay_s:
            await asyncio.sleep(state.config.reply_delay_s)
        return cls(
            state=state,
            request=request,
            provider=provider,
            now=now,
            request_id=state.next_request_id(),
            credential=read_credential(
                request.headers,
                provider=provider,
                oauth_token_prefixes=state.config.oauth_token_prefixes,
            ),
            body=body if isinstance(body, dict) else None,
        )

    @property
    def messages(self) -> list[Any]:
        messages = (self.body or {}).get("messages")
        return messages if isinstance(messages, list) else []

    @property
    def stream(self) -> bool:
        return bool((self.body or {}).get("stream"))

    @property
    def max_tokens(self) -> int | None:
        body = self.body or {}
        value = body.get("max_tokens", body.get("max_completion_tokens"))
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def prepare_reply(
        self, *, prompt_parts: dict[str, Any], agent: AgentScript | None = None
    ) -> Usage:
        """Build the reply (the agent's next move, if a script is given) and return what serving
        it costs (input + known output)."""
        reply = make_reply(self.messages, max_tokens=self.max_tokens)
        if agent is not None:
            tools = (self.body or {}).get("tools")
            reply = next_move(agent, reply=reply, messages=self.messages, tools=tools)
        self.reply = reply
        return Usage(
            input_tokens=estimate_tokens(plain_text_prompt(prompt_parts)),
            output_tokens=self.reply.output_tokens,
        )

    def finish(
        self, response: Response, *, served: Usage | None = None, error_type: str | None = None
    ) -> Response:
        response.headers["date"] = http_date(self.now)
        response.headers[_REQUEST_ID_HEADER[self.provider]] = self.request_id
        body = self.body or {}
        credential, reply = self.credential, self.reply
        model = body.get("model")
        results = tool_results(self.messages)
        call = reply.tool_call if reply and served is not None else None  # asked for if served
        entry = LogEntry(
            at=self.now,
            answered_at=self.state.clock(),
            method=self.request.method,
            path=self.request.url.path,
            provider=self.provider,
            key_fingerprint=credential.fingerprint if credential else None,
            key_masked=credential.masked if credential else None,
            auth=credential.scheme if credential else None,
            credential_kind=credential.kind if credential else None,
            model=model if isinstance(model, str) else None,
            messages=len(self.messages),
            user_turns=reply.user_turns if reply else 0,
            tool_results=len(results),
            tool_result_ids=[r.tool_use_id for r in results],
            tool_errors=sum(r.is_error for r in results),
            stream=self.stream,
            max_tokens=self.max_tokens,
            status=response.status_code,
            error_type=error_type,
            fault=self.fault,
            prior_digest=reply.prior_digest if reply else None,
            last_user_text=reply.last_user_text if reply else None,
            tool_step=call.step if call else None,
            tool_use_id=call.tool_use_id if call else None,
        )
        self.state.record(entry, credential=credential, served=served)
        return response
