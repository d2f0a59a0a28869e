"""One Anthropic Messages call, as every system but LiteLLM and the flows makes it: httpx, the
leased key in `x-api-key`, the conversation so far, and the answer kept whole (status, headers,
body, when it arrived) for whoever wants to read its limit headers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from bench.goodput.conversation import MAX_TOKENS, MODEL, Message

__all__ = ["Answer", "new_client", "send_message"]

_ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    received_at: datetime  # aware UTC, when the whole answer was in

    def reply_text(self) -> str:
        content = json.loads(self.body)["content"]
        return "".join(block["text"] for block in content if block.get("type") == "text")

    def retry_after_s(self) -> float | None:
        """The 429's `retry-after` (integer seconds), None when absent or junk."""
        try:
            value = float(self.headers.get("retry-after", ""))
        except ValueError:
            return None
        return value if math.isfinite(value) and value >= 0 else None


def new_client(base_url: str) -> httpx.AsyncClient:
    # Enough connections for every job at once: a queue in the client would count as the system's.
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    return httpx.AsyncClient(base_url=base_url, timeout=60.0, limits=limits)


async def send_message(http: httpx.AsyncClient, *, secret: str, messages: list[Message]) -> Answer:
    response = await http.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": MAX_TOKENS, "messages": messages},
        headers={"x-api-key": secret, "anthropic-version": _ANTHROPIC_VERSION},
    )
    return Answer(
        status=response.status_code,
        headers=response.headers,
        body=response.content,
        received_at=datetime.now(UTC),
    )
