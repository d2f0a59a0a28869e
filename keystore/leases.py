"""The pool: acquire, renew, release and explain leases on keys.

Invariant: the unexpired leases of a key never exceed its max_concurrency. It holds by construction:
a key has exactly max_concurrency slot rows (keys.py keeps them in step) and a lease *is* an
occupied slot, taken with one conditional write under a row lock: PostgreSQL `FOR UPDATE SKIP
LOCKED` (two acquirers never take the same slot; they skip to the next one), SQLite `BEGIN
IMMEDIATE` (one writer at a time). When max_concurrency is lowered below the leases in flight,
the extra occupied slots block new leases on that key until they end, so the cap is never
exceeded in between either.

Selection order: priority, then keys at or over the proactive utilization threshold last, then least
recently used (never used first), then id. A key is eligible when it is enabled, usable, not cooling
and has a free slot."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, or_, select

from keystore.audit import AuditWriter
from keystore.eligibility import key_state, usable_at
from keystore.errors import NoKeyAvailable
from keystore.keys import drop_slots, keys_t, slots_t
from keystore.types import UTCDateTime, as_utc

__all__ = [
    "Acquired",
    "Candidate",
    "Released",
    "acquire_slot",
    "candidates",
    "drop_surplus_slot",
    "exhausted",
    "reclaim_expired",
    "release_lease",
    "renew_lease",
]


@dataclass(frozen=True)
class Acquired:
    lease_id: str
    key_id: int
    key_name: str
    ciphertext: str
    acquired_at: datetime
    expires_at: datetime
    reclaimed: tuple[str, str | None] | None = None  # (lease id, holder) this slot was taken from


def _last_use() -> Any:
    """Per key, when it last gave out a lease (newest use over its slots): one grouped scan,
    joined, rather than a correlated subquery per candidate slot."""
    s3 = slots_t.alias("recent")
    return (
        select(s3.c.key_id, func.max(s3.c.last_acquired_at).label("at"))
        .group_by(s3.c.key_id)
        .subquery("last_use")
    )


def _pick_slot() -> Any:
    """The best free slot of a provider (bind parameters: p_provider, p_now, p_threshold, and
    p_prefer: the key the holder used last, which it keeps while that key can serve)."""
    k, s = keys_t.c, slots_t.c
    now = bindparam("p_now", type_=UTCDateTime)
    s2, k2 = slots_t.alias("over_cap"), keys_t.alias("over_cap_key")
    # Keys whose max_concurrency was lowered below the leases still out. Uncorrelated, so it is
    # computed once per statement (a hashed subplan), not once per candidate slot.
    over_cap_keys = (
        select(s2.c.key_id)
        .join(k2, k2.c.id == s2.c.key_id)
        .where(s2.c.slot >= k2.c.max_concurrency, s2.c.expires_at > now)
    )
    last_use = _last_use()
    return (
        select(s.id, s.key_id, s.lease_id.label("old_lease"), s.holder.label("old_holder"))
        .select_from(
            slots_t.join(keys_t, k.id == s.key_id).outerjoin(last_use, last_use.c.key_id == k.id)
        )
        .where(
            k.provider == bindparam("p_provider"),
            usable_at(now),
            s.slot < k.max_concurrency,
            or_(s.expires_at.is_(None), s.expires_at <= now),
            s.key_id.not_in(over_cap_keys),
        )
        .order_by(
            case((k.id == bindparam("p_prefer"), 0), else_=1),
            k.priority,
            case((k.utilization >= bindparam("p_threshold"), 1), else_=0),
            func.coalesce(last_use.c.at, k.last_used_at).asc().nulls_first(),
            k.id,
            s.last_acquired_at.asc().nulls_first(),
            s.slot,
        )
        .limit(1)
    )


def _take_slot() -> Any:
    now = bindparam("p_now", type_=UTCDateTime)
    return slots_t.update().values(
        lease_id=bindparam("p_lease_id"),
        holder=bindparam("p_holder"),
        acquired_at=now,
        expires_at=bindparam("p_expires_at", type_=UTCDateTime),
        uses=slots_t.c.uses + 1,
        last_acquired_at=now,
    )


def _acquire_one_statement() -> Any:
    """PostgreSQL: pick and take a slot in one round trip. `FOR UPDATE OF lease_slots SKIP
    LOCKED` makes concurrent acquirers take different slots instead of queueing on one."""
    picked = _pick_slot().with_for_update(of=slots_t, skip_locked=True).cte("picked")
    return (
        _take_slot()
        .where(slots_t.c.id == picked.c.id, keys_t.c.id == picked.c.key_id)
        .returning(
            keys_t.c.id, keys_t.c.name, keys_t.c.ciphertext, picked.c.old_lease, picked.c.old_holder
        )
    )


_PICK = _pick_slot()
_TAKE = _take_slot().where(slots_t.c.id == bindparam("p_slot_id"))
_KEY_SECRET = select(keys_t.c.name, keys_t.c.ciphertext).where(keys_t.c.id == bindparam("p_key_id"))
_ACQUIRE_PG = _acquire_one_statement()


def acquire_slot(
    conn: Connection,
    *,
    now: datetime,
    provider: str,
    holder: str,
    ttl_s: float,
    threshold: float,
    prefer: int | None = None,
) -> Acquired | None:
    """Take the best free slot, or None when no slot is free (or all free ones are being taken by
    concurrent transactions right now: the caller tells the two apart with `candidates`).

    On PostgreSQL this is ONE statement, so it may run on an autocommit connection; on SQLite the
    caller's BEGIN IMMEDIATE transaction makes the three statements one writer's work."""
    lease_id, expires_at = uuid.uuid4().hex, now + timedelta(seconds=ttl_s)
    params = {
        "p_provider": provider,
        "p_now": now,
        "p_threshold": threshold,
        "p_prefer": prefer,
        "p_holder": holder,
        "p_lease_id": lease_id,
        "p_expires_at": expires_at,
    }
    if conn.dialect.name == "postgresql":
        row = conn.execute(_ACQUIRE_PG, params).one_or_none()
        if row is None:
            return None
        key_id, name, ciphertext, old_lease, old_holder = row
    else:  # SQLite: the caller's BEGIN IMMEDIATE already made us the only writer
        picked = conn.execute(_PICK, params).one_or_none()
        if picked is None:
            return None
        conn.execute(_TAKE, {**params, "p_slot_id": picked.id})
        name, ciphertext = conn.execute(_KEY_SECRET, {"p_key_id": picked.key_id}).one()
        key_id, old_lease, old_holder = picked.key_id, picked.old_lease, picked.old_holder
    # an expired lease nobody released (its holder died): the caller records lease_reclaimed
    reclaimed = (old_lease, old_holder) if old_lease is not None else None
    return Acquired(lease_id, key_id, name, ciphertext, now, expires_at, reclaimed)


def renew_lease(conn: Connection, *, lease_id: str, ttl_s: float, now: datetime) -> datetime | None:
    """New expiry, or None when the lease already expired or is gone (it must not be revived:
    its slot may be someone else's now)."""
    expires_at = now + timedelta(seconds=ttl_s)
    updated = conn.execute(
        slots_t.update()
        .where(slots_t.c.lease_id == lease_id, slots_t.c.expires_at > now)
        .values(expires_at=expires_at)
    ).rowcount
    return expires_at if updated else None


def _release_statement() -> Any:
    cap = select(keys_t.c.max_concurrency).where(keys_t.c.id == slots_t.c.key_id).scalar_subquery()
    return (
        slots_t.update()
        .where(slots_t.c.lease_id == bindparam("p_lease_id"))
        .values(lease_id=None, holder=None, acquired_at=None, expires_at=None)
        .returning(slots_t.c.id, slots_t.c.key_id, (slots_t.c.slot >= cap).label("over_cap"))
    )


_RELEASE = _release_statement()


@dataclass(frozen=True)
class Released:
    held: bool  # False: the lease was no longer there (expired and reclaimed)
    surplus_slot: tuple[int, int] | None = None  # (key id, slot id) to drop: cap was lowered


def release_lease(conn: Connection, *, lease_id: str) -> Released:
    """Free the slot (one statement). A slot above a lowered max_concurrency is reported for the
    caller to drop in a transaction of its own (`drop_surplus_slot`)."""
    row = conn.execute(_RELEASE, {"p_lease_id": lease_id}).one_or_none()
    if row is None:
        return Released(held=False)
    return Released(held=True, surplus_slot=(row.key_id, row.id) if row.over_cap else None)


def drop_surplus_slot(conn: Connection, *, key_id: int, slot_id: int) -> None:
    """Drop a free slot above its key's max_concurrency (kept if it was leased again meanwhile)."""
    cap = select(keys_t.c.max_concurrency).where(keys_t.c.id == key_id).scalar_subquery()
    free = conn.execute(
        select(slots_t.c.id).where(
            slots_t.c.id == slot_id, slots_t.c.lease_id.is_(None), slots_t.c.slot >= cap
        )
    ).scalar_one_or_none()
    if free is not None:
        drop_slots(conn, key_id, [slot_id])


def reclaim_expired(conn: Connection, *, audit: AuditWriter) -> int:
    """Free every slot whose lease expired unreleased and record each as lease_reclaimed."""
    expired = conn.execute(
        select(slots_t.c.id, slots_t.c.key_id, slots_t.c.lease_id, slots_t.c.holder).where(
            slots_t.c.lease_id.is_not(None), slots_t.c.expires_at <= audit.now
        )
    ).all()
    for row in expired:
        freed = conn.execute(
            slots_t.update()
            .where(slots_t.c.id == row.id, slots_t.c.lease_id == row.lease_id)
            .values(lease_id=None, holder=None, acquired_at=None, expires_at=None)
        ).rowcount
        if freed:
            audit.record(
                "lease_reclaimed", key_id=row.key_id, lease_id=row.lease_id, holder=row.holder
            )
    return len(expired)


@dataclass(frozen=True)
class Candidate:
    """One key as the pool sees it right now."""

    id: int
    name: str
    eligible: bool
    reason: str
    sort_key: tuple[Any, ...]
    cooling_until: datetime | None
    next_lease_expiry: datetime | None
    state: str


def candidates(
    conn: Connection, *, provider: str, now: datetime, threshold: float, prefer: int | None = None
) -> list[Candidate]:
    """Every key of the provider with whether it is eligible now and why (in selection order;
    `prefer` as in acquire_slot)."""
    k, s = keys_t.c, slots_t.c
    active = (
        select(
            s.key_id,
            func.count().label("in_cap"),
            func.min(s.expires_at).label("next_expiry"),
            func.max(case((s.slot >= k.max_concurrency, 1), else_=0)).label("over_cap"),
        )
        .select_from(slots_t.join(keys_t, k.id == s.key_id))
        .where(s.expires_at > now, k.provider == provider)
        .group_by(s.key_id)
    )
    leases = {r.key_id: r for r in conn.execute(active)}
    last_use = _last_use()
    rows = conn.execute(
        select(keys_t, func.coalesce(last_use.c.at, k.last_used_at).label("key_last_used"))
        .outerjoin(last_use, last_use.c.key_id == k.id)
        .where(k.provider == provider)
    ).all()
    result = [
        _candidate(r, leases.get(r.id), now=now, threshold=threshold, prefer=prefer) for r in rows
    ]
    return sorted(result, key=lambda c: c.sort_key)


def _candidate(
    row: Any, lease: Any, *, now: datetime, threshold: float, prefer: int | None
) -> Candidate:
    active = lease.in_cap if lease else 0
    next_expiry = lease.next_expiry if lease else None
    over = row.utilization is not None and row.utilization >= threshold
    last_used = as_utc(row.key_last_used)
    preferred = row.id == prefer
    sort_key = (not preferred, row.priority, over, last_used is not None, last_used or now, row.id)
    state = key_state(row, active_leases=active, now=now)
    over_cap = bool(lease and lease.over_cap) and state in ("available", "busy")
    if over_cap:
        state = "busy"
    if state == "disabled":
        reason = "disabled"
    elif state == "unusable":
        reason = f"unusable: {row.unusable_reason}"
    elif state == "cooling":
        why = f" ({row.cooling_reason})" if row.cooling_reason else ""
        reason = f"cooling until {row.cooling_until.isoformat(timespec='seconds')}{why}"
    elif over_cap:
        reason = (
            f"busy: {active} leases out after max_concurrency was lowered to {row.max_concurrency}"
        )
    elif state == "busy":
        reason = f"busy: {active}/{row.max_concurrency} leases in use"
    else:
        reason = f"available: {active}/{row.max_concurrency} leases in use"
        if preferred:
            reason += ", the run's key (affinity: kept while it can serve)"
        if over:
            reason += f", utilization {row.utilization:.2f} >= {threshold} (chosen last)"
    return Candidate(
        row.id,
        row.name,
        state == "available",
        reason,
        sort_key,
        row.cooling_until,
        next_expiry,
        state,
    )


def exhausted(found: list[Candidate], *, provider: str, now: datetime) -> NoKeyAvailable | None:
    """Why nothing could be leased, and when something may free up; None when a candidate is
    eligible after all (on PostgreSQL, concurrent acquirers were taking the free slots: look
    again)."""
    if any(c.eligible for c in found):
        return None
    usable = [c for c in found if c.state not in ("disabled", "unusable")]
    detail = [f"key {c.id} ({c.name}): {c.reason}" for c in found]
    if not usable:
        return NoKeyAvailable(provider, reason="none_enabled", retry_at=None, detail=detail)
    times = [
        t
        for c in usable
        for t in (c.cooling_until, c.next_lease_expiry)
        if t is not None and t > now
    ]
    busy = any(c.state == "busy" for c in usable)
    return NoKeyAvailable(
        provider,
        reason="all_busy" if busy else "all_cooling",
        retry_at=min(times, default=now),
        detail=detail,
    )
