"""Emulator configuration as data: which keys exist, their limits, the faults to inject and the
agent script to play (`agent_script.py`).

Everything here can be given at start (`EmulatorConfig`, e.g. from a JSON file) and replaced at
runtime through the admin endpoints. A full key given in `key` is turned into its fingerprint as
soon as the model is built, so no config object (nor the admin's echo of it) holds a secret.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.emulator.agent_script import AgentScript
from api.emulator.keys import fingerprint

__all__ = [
    "EmulatorConfig",
    "FaultKind",
    "FaultRule",
    "KeyMatch",
    "LimitRule",
    "UnifiedClaim",
    "WindowLimit",
]

FaultKind = Literal[
    "overloaded",  # Anthropic 529 overloaded_error; OpenAI 503 server_error
    "server_error",  # HTTP 500: Anthropic api_error, OpenAI server_error (an outage, not a limit)
    "stream_overloaded",  # Anthropic: 200 whose SSE stream carries `event: error` overloaded
    "spend_limit",  # Anthropic 429 enforced_spend_limit_reached, no reset headers
    "insufficient_quota",  # OpenAI 429 insufficient_quota
    "request_too_large",  # OpenAI 429 "Request too large ..."; Anthropic 413 request_too_large
    "junk_headers",  # 429 with `retry-after: abc` and unparseable resets
    "missing_headers",  # 429 with no rate-limit header at all
]
# Which provider each fault can be rendered for; a fault never fires on the other one.
FAULT_PROVIDERS: dict[str, frozenset[str]] = {
    "overloaded": frozenset({"anthropic", "openai"}),
    "server_error": frozenset({"anthropic", "openai"}),
    "stream_overloaded": frozenset({"anthropic"}),
    "spend_limit": frozenset({"anthropic"}),
    "insufficient_quota": frozenset({"openai"}),
    "request_too_large": frozenset({"anthropic", "openai"}),
    "junk_headers": frozenset({"anthropic", "openai"}),
    "missing_headers": frozenset({"anthropic", "openai"}),
}
# The claude CLI reads `anthropic-ratelimit-unified-<abbrev>-*` for these claims (2.1.332).
UnifiedClaim = Literal["five_hour", "seven_day", "seven_day_overage_included"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyMatch(_Strict):
    """Which keys a rule applies to: one exact key (or its fingerprint), a prefix, or all keys."""

    key: str | None = Field(default=None, description="exact key; stored as its fingerprint only")
    key_fingerprint: str | None = None
    key_prefix: str | None = None

    @model_validator(mode="after")
    def _forget_the_key(self) -> KeyMatch:
        if self.key is not None:
            if self.key_fingerprint not in (None, fingerprint(self.key)):
                raise ValueError("key and key_fingerprint name different keys")
            self.key_fingerprint = fingerprint(self.key)
            self.key = None
        if self.key_fingerprint is not None and self.key_prefix is not None:
            raise ValueError("give an exact key or a prefix, not both")
        return self

    def matches(self, *, secret: str, key_fingerprint: str) -> bool:
        if self.key_fingerprint is not None:
            return self.key_fingerprint == key_fingerprint
        if self.key_prefix is not None:
            return secret.startswith(self.key_prefix)
        return True

    @property
    def specificity(self) -> tuple[int, int]:
        """Exact beats the longest prefix, which beats a catch-all."""
        if self.key_fingerprint is not None:
            return (2, 0)
        if self.key_prefix is not None:
            return (1, len(self.key_prefix))
        return (0, 0)


class WindowLimit(_Strict):
    """Caps per window; a cap left None is not limited. Tokens are input + output."""

    requests: int | None = Field(default=None, ge=1)
    tokens: int | None = Field(default=None, ge=1)
    input_tokens: int | None = Field(default=None, ge=1)
    output_tokens: int | None = Field(default=None, ge=1)
    window_s: float = Field(default=60.0, gt=0)
    # fixed: the window opens at the first request after the last one closed (like Claude's
    # five-hour window) and resets all at once; sliding: the last `window_s` seconds count;
    # token_bucket: each cap is a bucket that starts full and refills at cap / window_s per
    # second (how Anthropic limits API keys; token_bucket.py).
    window: Literal["fixed", "sliding", "token_bucket"] = "fixed"


class LimitRule(KeyMatch, WindowLimit):
    """A limit for matching keys. With `group`, all matching keys consume one shared window."""

    group: str | None = Field(default=None, description="org-wide: keys of a group share a window")
    unified_claim: UnifiedClaim = "five_hour"
    # Bearer (subscription) responses say `allowed_warning` from this utilization on.
    warning_utilization: float = Field(default=0.8, gt=0, le=1)


class FaultRule(KeyMatch):
    """A scripted failure for matching keys: the next `times` requests (None: every one), each
    firing with `probability` drawn from a generator seeded with `seed` (reproducible)."""

    kind: FaultKind
    times: int | None = Field(default=None, ge=1)
    probability: float = Field(default=1.0, ge=0, le=1)
    seed: int = 0
    provider: Literal["anthropic", "openai"] | None = None


class EmulatorConfig(_Strict):
    limits: list[LimitRule] = Field(default_factory=list)
    # All keys of every provider share this window (an IP-wide limit): its 429 names no reset.
    ip_limit: WindowLimit | None = None
    faults: list[FaultRule] = Field(default_factory=list)
    # None accepts any non-empty key; otherwise only matching keys, the rest get 401.
    accepted_keys: list[KeyMatch] | None = None
    # Anthropic bearer tokens with these prefixes are subscription (OAuth) tokens even without
    # the `oauth-2025-04-20` beta header (the Python SDK sends API keys as bearer tokens too).
    oauth_token_prefixes: list[str] = Field(default_factory=lambda: ["sk-ant-oat"])
    # The request log keeps this many entries (oldest dropped first).
    log_capacity: int = Field(default=10_000, ge=1)
    # Every answer waits this long (real time), so concurrent callers overlap measurably.
    reply_delay_s: float = Field(default=0.0, ge=0, le=60)
    # Anthropic requests that declare tools get the script's tool calls (see agent.py).
    agent: AgentScript | None = None
