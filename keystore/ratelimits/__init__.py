"""What provider responses say about a key's limits, and when those limits reset.

    parse_rate_limit(provider, *, status, headers, body, received_at)  HTTP responses
    parse_claude_code_output(messages, *, received_at)                 `claude` CLI JSON output
    parse_utilization(provider, *, headers)                            0..1, to rotate before a hit

The spec, with its test vectors, is RATE_LIMITS.md. Junk input never raises.
"""

from keystore.ratelimits.claude_code import parse_claude_code_output
from keystore.ratelimits.parse import parse_rate_limit, parse_utilization
from keystore.ratelimits.signal import RateLimitSignal, SignalKind

__all__ = [
    "RateLimitSignal",
    "SignalKind",
    "parse_claude_code_output",
    "parse_rate_limit",
    "parse_utilization",
]
