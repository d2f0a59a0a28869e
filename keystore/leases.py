"""The pool's writes: acquire, renew, release and reclaim leases on keys.

Invariant: the unexpired leases of a key never exceed its max_concurrency. It holds by construction:
a key has exactly max_concurrency slot rows (keys.py keeps them in step) and a lease *is* an
occupied slot, taken with one conditional write under a row lock: PostgreSQL `FOR UPDATE SKIP
LOCKED` (two acquirers never take the same slot; they skip to the next one), SQLite `BEGIN
IMMEDIATE` (one writer at a time). When max_concurrency is lowered below the leases in flight,
the extra occupied slots block new leases on that key until they end, so the cap is never
exceeded in between either.

A key is eligible when it is enabled, usable, not cooling, none of its limit buckets refuses the
request (limits.py) and it has a free slot. On PostgreSQL the key row is locked too (skipped when
another acquirer holds it), so two acquirers never both count the same bucket as having room.

Selection order (`SELECTION_ORDER`): the holder's last key while it can serve (affinity), priority,
the subscription window that resets soonest (its unused quota expires first), keys at or over the
proactive utilization threshold last, least recently used (never used first), id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, or_, select

from keystore import limits
from keystore.audit import AuditWriter
from keystore.eligibility import usable_at
from keystore.keys import drop_slots, keys_t, slots_t
from keystore.types import UTCDateTime, as_utc

__all__ = [
    "HOLD_WEIGHT",
    "Acquired",
    "Released",
    "acquire_slot",
    "drop_surplus_slot",
    "find_lease",
    "last_use",
    "new_lease_id",
    "reclaim_expired",
    "reclaim_held_by",
    "release_lease",
    "released_before",
    "renew_lease",
    "selection_order",
]

HOLD_WEIGHT = 0.3  # weight of the newest hold time in a slot's moving average


@dataclass(frozen=True)
class Acquired:
    lease_id: str
    key_id: int
    key_name: str
    ciphertext: str
    acquired_at: datetime
    expires_at: datetime
    reclaimed: tuple[str, str | None] | None = None  # (lease id, holder) this slot was taken from


def last_use() -> Any:
    """Per key, when it last gave out a lease (newest use over its slots): one grouped scan,
    joined, rather than a correlated subquery per candidate slot."""
    s3 = slots_t.alias("recent")
    return (
        select(s3.c.key_id, func.max(s3.c.last_acquired_at).label("at"))
        .group_by(s3.c.key_id)
        .subquery("last_use")
    )


def selection_order(keys: Any, used: Any, *, now: Any, threshold: Any, prefer: Any) -> list[Any]:
    """How keys that can serve are ranked (`used`: when each was last leased, from last_use)."""
    return [
        case((keys.id == prefer, 0), else_=1),
        keys.priority,
        limits.window_reset(keys, now).asc().nulls_last(),
        case((limits.utilization(keys, now) >= threshold, 1), else_=0),
        func.coalesce(used.at, keys.last_used_at).asc().nulls_first(),
        keys.id,
    ]


def _pick_slot() -> Any:
    """The best free slot of a provider (bind parameters: p_provider, p_now, p_threshold,
    p_need: the request's input tokens, and p_prefer: the key the holder used last)."""
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
    used = last_use()
    keys = keys_t.c
    order = selection_order(
        keys, used.c, now=now, threshold=bindparam("p_threshold"), prefer=bindparam("p_prefer")
    )
    return (
        select(s.id, s.key_id, s.lease_id.label("old_lease"), s.holder.label("old_holder"))
        .select_from(slots_t.join(keys_t, k.id == s.key_id).outerjoin(used, used.c.key_id == k.id))
        .where(
            k.provider == bindparam("p_provider"),
            usable_at(now),
            ~limits.blocked(keys, now, bindparam("p_need")),
            s.slot < k.max_concurrency,
            or_(s.expires_at.is_(None), s.expires_at <= now),
            s.key_id.not_in(over_cap_keys),
        )
        .order_by(*order, s.last_acquired_at.asc().nulls_first(), s.slot)
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
        reserved_tokens=bindparam("p_reserved"),
    )


def _acquire_one_statement() -> Any:
    """PostgreSQL: pick and take a slot in one round trip. `FOR UPDATE OF lease_slots, keys SKIP
    LOCKED` makes concurrent acquirers take different slots instead of queueing on one, and
    never two slots of one key at the same instant (each must see the other's lease to count it
    against the key's buckets)."""
    picked = _pick_slot().with_for_update(of=[slots_t, keys_t], skip_locked=True).cte("picked")
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
    lease_id: str,
    now: datetime,
    provider: str,
    holder: str,
    ttl_s: float,
    threshold: float,
    prefer: int | None = None,
    input_tokens: int | None = None,
) -> Acquired | None:
    """Take the best free slot, or None when no slot is free (or all free ones are being taken by
    concurrent transactions right now: the caller tells the two apart with `candidates`).

    On PostgreSQL this is ONE statement, so it may run on an autocommit connection; on SQLite the
    caller's BEGIN IMMEDIATE transaction makes the three statements one writer's work.

    `lease_id` is the caller's (`new_lease_id`), so a retry after a lost answer can find the
    lease the first attempt took (`find_lease`) instead of taking a second slot."""
    expires_at = now + timedelta(seconds=ttl_s)
    params = {
        "p_provider": provider,
        "p_now": now,
        "p_threshold": threshold,
        "p_prefer": prefer,
        "p_need": max(1, input_tokens or 0),
        "p_reserved": max(0, input_tokens or 0),
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


def _still_admitted() -> Any:
    keys = keys_t.c
    now = bindparam("p_now", type_=UTCDateTime)
    others_allow = ~limits.blocked(keys, now, bindparam("p_need"), bindparam("p_lease_id"))
    return select(others_allow).where(keys.id == bindparam("p_key_id"))


_STILL_ADMITTED = _still_admitted()


def still_admitted(
    conn: Connection, *, got: Acquired, now: datetime, input_tokens: int | None
) -> bool:
    """PostgreSQL: whether the key's buckets admit the lease just taken, counting every other
    lease out on the key now. The taking statement counted them in its snapshot, which it took
    before it waited for the key row's lock: a lease another acquirer committed in between
    holds no lock any more and was not counted (seen in CI as a fourth lease on a bucket with
    three requests left). This read runs after the take committed, so it sees that lease."""
    params = {
        "p_key_id": got.key_id,
        "p_lease_id": got.lease_id,
        "p_now": now,
        "p_need": max(1, input_tokens or 0),
    }
    return bool(conn.execute(_STILL_ADMITTED, params).scalar())


def new_lease_id() -> str:
    return uuid.uuid4().hex


def find_lease(conn: Connection, *, lease_id: str) -> Acquired | None:
    """The slot `lease_id` holds, as `acquire_slot` returned it, or None: how a retried acquire
    tells whether its first attempt's commit reached the server before the connection died."""
    s, k = slots_t.c, keys_t.c
    row = conn.execute(
        select(s.key_id, k.name, k.ciphertext, s.acquired_at, s.expires_at)
        .join(keys_t, k.id == s.key_id)
        .where(s.lease_id == lease_id)
    ).one_or_none()
    if row is None:
        return None
    acquired_at, expires_at = as_utc(row.acquired_at), as_utc(row.expires_at)
    assert acquired_at is not None and expires_at is not None
    return Acquired(lease_id, row.key_id, row.name, row.ciphertext, acquired_at, expires_at)


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
    s = slots_t.c
    cap = select(keys_t.c.max_concurrency).where(keys_t.c.id == s.key_id).scalar_subquery()
    held: Any = bindparam("p_held_s")
    average = case(
        (s.hold_s.is_(None), held), else_=(1 - HOLD_WEIGHT) * s.hold_s + HOLD_WEIGHT * held
    )
    return (
        slots_t.update()
        .where(s.lease_id == bindparam("p_lease_id"))
        .values(
            lease_id=None,
            holder=None,
            acquired_at=None,
            expires_at=None,
            reserved_tokens=0,
            hold_s=average,
        )
        .returning(s.id, s.key_id, (s.slot >= cap).label("over_cap"))
    )


_RELEASE = _release_statement()


@dataclass(frozen=True)
class Released:
    held: bool  # False: the lease was no longer there (expired and reclaimed)
    surplus_slot: tuple[int, int] | None = None  # (key id, slot id) to drop: cap was lowered


def release_lease(conn: Connection, *, lease_id: str, held_s: float = 0.0) -> Released:
    """Free the slot (one statement), folding `held_s` into the slot's usual hold time. A slot
    above a lowered max_concurrency is reported for the caller to drop in a transaction of its
    own (`drop_surplus_slot`)."""
    row = conn.execute(_RELEASE, {"p_lease_id": lease_id, "p_held_s": held_s}).one_or_none()
    if row is None:
        return Released(held=False)
    return Released(held=True, surplus_slot=(row.key_id, row.id) if row.over_cap else None)


def released_before(conn: Connection, *, lease_id: str) -> Released | None:
    """For a retried release: the lease is no longer there, so the first attempt's commit
    landed and freed it (expiring and being reclaimed in the instant between the two attempts
    is the one other way, and a TTL is minutes). Which slot it held is not known any more: a
    surplus slot left behind is free and above the cap, and the next resize drops it."""
    held = conn.execute(select(slots_t.c.id).where(slots_t.c.lease_id == lease_id)).first()
    return Released(held=True) if held is None else None


def drop_surplus_slot(conn: Connection, *, key_id: int, slot_id: int) -> None:
    """Drop a free slot above its key's max_concurrency (kept if it was leased again meanwhile)."""
    cap = select(keys_t.c.max_concurrency).where(keys_t.c.id == key_id).scalar_subquery()
    # Locked, so it cannot be taken between this check and the delete (the cap raised again
    # and an acquirer in the slot): PostgreSQL re-checks the condition once the row is locked.
    free = conn.execute(
        select(slots_t.c.id)
        .where(slots_t.c.id == slot_id, slots_t.c.lease_id.is_(None), slots_t.c.slot >= cap)
        .with_for_update()
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
            .values(
                lease_id=None, holder=None, acquired_at=None, expires_at=None, reserved_tokens=0
            )
        ).rowcount
        if freed:
            audit.record(
                "lease_reclaimed", key_id=row.key_id, lease_id=row.lease_id, holder=row.holder
            )
    return len(expired)


def reclaim_held_by(conn: Connection, *, holder_prefix: str, audit: AuditWriter) -> int:
    """Free every slot whose holder starts with `holder_prefix`, expired or not, and record each
    as lease_reclaimed. Only for holders known to be dead (a crashed flow run starting again:
    its old process cannot release, and its leases would count until they expire). The caller
    makes sure the prefix names one holder family (it never frees another holder's slot)."""
    held = conn.execute(
        select(slots_t.c.id, slots_t.c.key_id, slots_t.c.lease_id, slots_t.c.holder).where(
            slots_t.c.lease_id.is_not(None),
            slots_t.c.holder.startswith(holder_prefix, autoescape=True),
        )
    ).all()
    freed_count = 0
    for row in held:
        freed = conn.execute(
            slots_t.update()
            .where(slots_t.c.id == row.id, slots_t.c.lease_id == row.lease_id)
            .values(
                lease_id=None, holder=None, acquired_at=None, expires_at=None, reserved_tokens=0
            )
        ).rowcount
        if freed:
            freed_count += 1
            audit.record(
                "lease_reclaimed",
                key_id=row.key_id,
                lease_id=row.lease_id,
                holder=row.holder,
                reason="its holder restarted",
            )
    return freed_count
