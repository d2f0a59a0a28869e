"""Every key of a provider as acquisition sees it: whether it can serve now, why not, and when it
may; and, when none can, the `NoKeyAvailable` that says so (`exhausted`).

Eligibility comes from the same SQL acquisition uses (eligibility.usable_at, limits.blocked), read
back as columns, so `explain` never disagrees with `acquire`. When a key may serve again:

- cooling: at `cooling_until`;
- limited by a bucket: at the bucket's reset; if only the leases taken since its last reading
  stand in the way (a herd), when those are expected to end (a response then reports again);
- busy: when its first lease is expected to end: acquired_at plus the slot's usual hold time
  (a moving average kept at release), at the latest its expiry.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, bindparam, func, select

from keystore import limits
from keystore.eligibility import key_state
from keystore.errors import NoKeyAvailable
from keystore.keys import keys_t, slots_t
from keystore.leases import last_use
from keystore.ratelimits.readings import UNIFIED_PREFIX
from keystore.ratelimits.signal import RateLimitSignal, SignalKind
from keystore.types import UTCDateTime, as_utc

__all__ = ["LOCAL_REFUSAL", "Candidate", "candidates", "exhausted", "standing_refusal"]

CandidateState = Literal["available", "busy", "cooling", "limited", "disabled", "unusable"]


@dataclass(frozen=True)
class Candidate:
    """One key as the pool sees it right now."""

    id: int
    name: str
    state: CandidateState
    reason: str
    sort_key: tuple[Any, ...]
    free_at: datetime | None  # when it may serve again (None: now, or never by itself)
    frees_by: Literal["lease", "reset", "none"]  # what it is waiting for
    buckets: tuple[limits.BucketState, ...] = ()

    @property
    def eligible(self) -> bool:
        return self.state == "available"

    @property
    def in_pool(self) -> bool:
        return self.state not in ("disabled", "unusable")


@dataclass(frozen=True)
class _Slot:
    acquired_at: datetime
    expires_at: datetime
    hold_s: float | None
    over_cap: bool

    def expected_end(self, now: datetime) -> datetime:
        if self.hold_s is None:
            return self.expires_at
        return max(now, min(self.expires_at, self.acquired_at + timedelta(seconds=self.hold_s)))


def _active_slots_query() -> Any:
    k, s = keys_t.c, slots_t.c
    return (
        select(s.key_id, s.acquired_at, s.expires_at, s.hold_s, s.slot >= k.max_concurrency)
        .select_from(slots_t.join(keys_t, k.id == s.key_id))
        .where(
            s.expires_at > bindparam("p_now", type_=UTCDateTime),
            k.provider == bindparam("p_provider"),
        )
    )


def _candidates_query() -> Any:
    """Every key of a provider with what acquisition's SQL says of it (bind parameters: p_now,
    p_need, p_provider). Built once: composing it costs more than running it."""
    k = keys_t.c
    now = bindparam("p_now", type_=UTCDateTime)
    used = last_use()
    return (
        select(
            keys_t,
            func.coalesce(used.c.at, k.last_used_at).label("key_last_used"),
            limits.blocked(k, now, bindparam("p_need")).label("blocked"),
            limits.utilization(k, now).label("used"),
            limits.window_reset(k, now).label("window_reset"),
        )
        .outerjoin(used, used.c.key_id == k.id)
        .where(k.provider == bindparam("p_provider"))
    )


_ACTIVE_SLOTS = _active_slots_query()
_CANDIDATES = _candidates_query()


def _active_slots(conn: Connection, *, provider: str, now: datetime) -> dict[int, list[_Slot]]:
    rows = conn.execute(_ACTIVE_SLOTS, {"p_now": now, "p_provider": provider}).all()
    found: dict[int, list[_Slot]] = defaultdict(list)
    for key_id, acquired_at, expires_at, hold_s, over_cap in rows:
        acquired, expires = as_utc(acquired_at), as_utc(expires_at)
        assert acquired is not None and expires is not None
        found[key_id].append(_Slot(acquired, expires, hold_s, bool(over_cap)))
    return found


def candidates(
    conn: Connection,
    *,
    provider: str,
    now: datetime,
    threshold: float,
    prefer: int | None = None,
    input_tokens: int | None = None,
) -> list[Candidate]:
    """Every key of the provider with whether it can serve a request of `input_tokens` now and
    why (in selection order; `prefer`: the holder's last key, as in acquire)."""
    need = max(1, input_tokens or 0)
    rows = conn.execute(_CANDIDATES, {"p_now": now, "p_need": need, "p_provider": provider}).all()
    slots = _active_slots(conn, provider=provider, now=now)
    buckets: dict[int, list[limits.BucketState]] = defaultdict(list)
    for bucket in limits.limits_of(conn, now=now, key_ids=[r.id for r in rows]):
        buckets[bucket.key_id].append(bucket)
    found = [
        _candidate(
            row,
            slots.get(row.id, []),
            buckets.get(row.id, []),
            now=now,
            threshold=threshold,
            prefer=prefer,
            need=need,
        )
        for row in rows
    ]
    return sorted(found, key=lambda c: c.sort_key)


def _candidate(
    row: Any,
    slots: list[_Slot],
    buckets: list[limits.BucketState],
    *,
    now: datetime,
    threshold: float,
    prefer: int | None,
    need: int,
) -> Candidate:
    active = len(slots)
    last_used = as_utc(row.key_last_used)
    window_reset = as_utc(row.window_reset)
    over = row.used >= threshold
    preferred = row.id == prefer
    sort_key = (
        not preferred,
        row.priority,
        window_reset is None,
        window_reset or now,
        over,
        last_used is not None,
        last_used or now,
        row.id,
    )
    state: CandidateState = key_state(row, active_leases=active, now=now)
    over_cap = any(s.over_cap for s in slots) and state in ("available", "busy")
    lease_ends = min((s.expected_end(now) for s in slots), default=None)
    free_at: datetime | None = None
    frees_by: Literal["lease", "reset", "none"] = "none"
    if state == "disabled":
        reason = "disabled"
    elif state == "unusable":
        reason = f"unusable: {row.unusable_reason}"
    elif state == "cooling":
        why = f" ({row.cooling_reason})" if row.cooling_reason else ""
        reason = f"cooling until {row.cooling_until.isoformat(timespec='seconds')}{why}"
        free_at, frees_by = row.cooling_until, "reset"
    elif row.blocked:
        state = "limited"
        refusing = [(b, b.refusal(now=now, need_tokens=need, reserve=row.reserve)) for b in buckets]
        refusing = [(b, why) for b, why in refusing if why is not None]
        free_at, frees_by = _limited_until(refusing, now=now, need=need, lease_ends=lease_ends)
        whys = "; ".join(why for _, why in refusing if why) or "a limit bucket refuses"
        until = f" until {free_at.isoformat(timespec='seconds')}" if free_at else ""
        reason = f"limited{until}: {whys}"
    elif over_cap or state == "busy":
        state = "busy"
        cap = row.max_concurrency
        reason = (
            f"busy: {active} leases out after max_concurrency was lowered to {cap}"
            if over_cap
            else f"busy: {active}/{cap} leases in use"
        )
        free_at, frees_by = lease_ends, "lease"
    else:
        reason = f"available: {active}/{row.max_concurrency} leases in use"
        if preferred:
            reason += ", the run's key (affinity: kept while it can serve)"
        if window_reset is not None:
            reason += f", window resets {window_reset.isoformat(timespec='seconds')}"
        if over:
            reason += f", utilization {row.used:.2f} >= {threshold} (chosen last)"
        left = [_left(b, now) for b in buckets if b.remaining is not None]
        if left:
            reason += f" ({', '.join(left)})"
    return Candidate(row.id, row.name, state, reason, sort_key, free_at, frees_by, tuple(buckets))


def _left(bucket: limits.BucketState, now: datetime) -> str:
    until = bucket.reset_at.isoformat(timespec="seconds")
    held = bucket.projected(now)
    if held != bucket.remaining and held is not None:
        return f"{bucket.bucket} ~{math.floor(held)} left, refilling to {bucket.limit:g} by {until}"
    return f"{bucket.bucket} {bucket.remaining:g} left until {until}"


def _limited_until(
    refusing: list[tuple[limits.BucketState, str | None]],
    *,
    now: datetime,
    need: int,
    lease_ends: datetime | None,
) -> tuple[datetime | None, Literal["lease", "reset", "none"]]:
    """When every refusing bucket has room: a bucket short on its own waits until it holds the
    request and what the leases out on it reserved (a token bucket refilling; any other bucket
    at its reset); one short only because of the leases out on it (a herd) waits for those to
    answer, which brings a fresh reading: that is a lease coming back, not a reset to wait out."""
    latest: datetime | None = None
    by: Literal["lease", "reset", "none"] = "none"
    for bucket, _ in refusing:
        held = bucket.projected(now)
        intrinsic = held is None or held < (need if bucket.bucket in limits.TOKEN_BUCKETS else 1)
        room = bucket.room_at(need + bucket.tokens_out)
        when, why = room, "reset"
        if not intrinsic:
            when, why = min(room, lease_ends or room), "lease"
        if latest is None or when > latest:
            latest, by = when, why  # type: ignore[assignment]
    return latest, by


def exhausted(found: list[Candidate], *, provider: str, now: datetime) -> NoKeyAvailable | None:
    """Why nothing could be leased, and when something may; None when a candidate is eligible
    after all (on PostgreSQL, concurrent acquirers were taking the free slots: look again)."""
    if any(c.eligible for c in found):
        return None
    detail = [f"key {c.id} ({c.name}): {c.reason}" for c in found]
    waiting = [c for c in found if c.in_pool and c.free_at is not None]
    if not any(c.in_pool for c in found):
        return NoKeyAvailable(provider, reason="none_enabled", retry_at=None, detail=detail)
    if not waiting:
        return NoKeyAvailable(provider, reason="all_busy", retry_at=now, detail=detail)
    first = min(waiting, key=lambda c: c.free_at or now)
    retry_at = max(now, first.free_at or now)
    if first.frees_by == "lease":
        return NoKeyAvailable(provider, reason="all_busy", retry_at=retry_at, detail=detail)
    return NoKeyAvailable(provider, reason="all_cooling", retry_at=retry_at, detail=detail)


LOCAL_REFUSAL = "keyrelay"  # the `source` of a refusal the keystore made, not the provider


def standing_refusal(
    conn: Connection, *, key_id: int, lease_id: str, now: datetime
) -> RateLimitSignal | None:
    """What the keystore already knows would refuse the next request of a lease's holder on
    `key_id`: the key cooling, or a bucket that said it has nothing left before its reset (the
    holder's own lease is not counted against it: its requests are the ones being asked about).
    None when the provider should be asked."""
    k = keys_t.c
    row = conn.execute(
        select(k.cooling_until, k.cooling_reason, k.reserve).where(k.id == key_id)
    ).one_or_none()
    if row is None:
        return None
    cooling_until = as_utc(row.cooling_until)
    if cooling_until is not None and cooling_until > now:
        why = row.cooling_reason or "cooling"
        return RateLimitSignal("rate_limit", cooling_until, True, f"{LOCAL_REFUSAL}: {why}")
    refusals = []
    buckets = limits.limits_of(conn, now=now, key_ids=[key_id], exclude_lease=lease_id)
    for bucket in buckets:
        why = bucket.refusal(now=now, need_tokens=1, reserve=row.reserve)
        if why is not None:
            refusals.append((bucket, why))
    if not refusals:
        return None
    bucket, why = max(refusals, key=lambda pair: pair[0].room_at(1))
    kind: SignalKind = "usage_limit" if bucket.bucket.startswith(UNIFIED_PREFIX) else "rate_limit"
    return RateLimitSignal(kind, bucket.room_at(1), True, f"{LOCAL_REFUSAL}: {why}")
