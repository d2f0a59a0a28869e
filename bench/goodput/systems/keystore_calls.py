"""The two keystore calls the pool API system makes, behind one adapter.

keyrelay is gaining `acquire(..., input_tokens=)` (admission that knows each key's buckets) and
`Keystore.record_response(key_id, *, provider, status, headers, body, received_at)` (every
response recorded, success or refusal). Until a keystore has them, the adapter falls back to
what keystores had before: `acquire(provider, holder)`, then `mark_limited` for a signal that
cools the key and `record_utilization` for a success, which is what the flows did. `path(ks)`
says which one a run used; the report prints it."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from datetime import datetime

from keystore import Keystore, Lease
from keystore.ratelimits import parse_rate_limit, parse_utilization

__all__ = ["acquire", "path", "record_response"]


_NEW_CALLS: dict[type[Keystore], bool] = {}


def _has_new_calls(ks: Keystore) -> bool:
    found = _NEW_CALLS.get(type(ks))
    if found is None:
        accepts_tokens = "input_tokens" in inspect.signature(ks.acquire).parameters
        found = _NEW_CALLS[type(ks)] = accepts_tokens and hasattr(ks, "record_response")
    return found


def path(ks: Keystore) -> str:
    return "new" if _has_new_calls(ks) else "legacy"


def acquire(ks: Keystore, *, provider: str, holder: str, input_tokens: int) -> Lease:
    if _has_new_calls(ks):
        return ks.acquire(provider=provider, holder=holder, input_tokens=input_tokens)  # type: ignore[call-arg]
    return ks.acquire(provider=provider, holder=holder)


def record_response(
    ks: Keystore,
    key_id: int,
    *,
    provider: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    received_at: datetime,
) -> None:
    if _has_new_calls(ks):
        ks.record_response(  # type: ignore[attr-defined]
            key_id,
            provider=provider,
            status=status,
            headers=headers,
            body=body,
            received_at=received_at,
        )
        return
    signal = parse_rate_limit(
        provider, status=status, headers=headers, body=body, received_at=received_at
    )
    if signal is not None and signal.cools_key:
        ks.mark_limited(key_id, signal)
    elif status == 200:
        utilization = parse_utilization(provider, headers=headers)
        if utilization is not None:
            ks.record_utilization(key_id, utilization)
