"""What the admin endpoint reports (also the admin client's return types). Secret-free."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["BucketReport", "KeyCounters", "LogEntry", "StateReport", "WindowReport"]


class KeyCounters(BaseModel):
    key_fingerprint: str
    masked: str
    requests: int = 0  # every authenticated request
    served: int = 0  # answered 200 with a reply (and counted against its windows)
    rate_limited: int = 0  # 429s returned: wasted calls
    rate_limited_at: list[float] = Field(default_factory=list)  # epoch seconds of those 429s
    statuses: dict[str, int] = Field(default_factory=dict)  # HTTP status -> count
    faults: dict[str, int] = Field(default_factory=dict)  # fault kind -> times it fired
    input_tokens: int = 0
    output_tokens: int = 0
    first_at: float | None = None
    last_at: float | None = None


class WindowReport(BaseModel):
    start: float
    end: float
    requests: int
    tokens: int
    input_tokens: int
    output_tokens: int
    keys: list[str]  # fingerprints of the keys it served


class BucketReport(BaseModel):
    """One window owner (`key:<fingerprint>`, `group:<name>` or `ip`) and what it served."""

    bucket_id: str
    scope: str  # key | group | ip
    window: str  # fixed | sliding
    window_s: float
    limits: dict[str, int | None]  # current caps per dimension
    windows: list[WindowReport]
    max_requests_in_window: int
    max_tokens_in_window: int
    served_over_limit: int  # requests served into a window already at its limit: must be 0


class LogEntry(BaseModel):
    at: float  # when the request arrived
    answered_at: float | None = None  # when its answer was ready (after any reply delay)
    method: str
    path: str
    provider: str
    key_fingerprint: str | None
    key_masked: str | None
    auth: str | None  # the header: x-api-key | bearer
    credential_kind: str | None  # api_key | oauth (subscription token)
    model: str | None
    messages: int  # len(messages) as sent
    user_turns: int  # user messages with text (tool results are not turns)
    tool_results: int = 0  # tool_result blocks the request carried
    tool_result_ids: list[str] = Field(default_factory=list)  # their tool_use_ids, in order
    tool_errors: int = 0  # of those, how many said `is_error: true` (e.g. permission denied)
    stream: bool
    max_tokens: int | None
    status: int
    error_type: str | None = None
    fault: str | None = None
    prior_digest: str | None = None  # digest of the conversation before the last user turn
    last_user_text: str | None = None  # first 40 characters
    # The agent script's step the reply asked for (1-based) and its tool_use id; None: no call.
    tool_step: int | None = None
    tool_use_id: str | None = None


class StateReport(BaseModel):
    now: float
    keys: list[KeyCounters]
    buckets: list[BucketReport]
