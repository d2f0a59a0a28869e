"""Key rows: add, update, delete, reset, and their public (secret-free) view."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, case, func, or_, select
from sqlalchemy.exc import IntegrityError

from keystore import limits
from keystore.audit import AuditWriter
from keystore.crypto import MasterKey, fingerprint, mask
from keystore.eligibility import key_state
from keystore.errors import DuplicateKey, KeyNotFound, LastEnabledKey
from keystore.models import AuditEvent, Key, KeyCreate, KeyPublic, KeyUpdate, LeaseSlot
from keystore.types import as_utc

__all__ = [
    "add_key",
    "delete_key",
    "drop_slots",
    "get_key",
    "key_exists",
    "list_keys",
    "lock_provider_keys",
    "reset_key",
    "slot_usage",
    "update_key",
]

keys_t = Key.__table__  # type: ignore[attr-defined]
slots_t = LeaseSlot.__table__  # type: ignore[attr-defined]
_PUBLIC_COLUMNS = [c for c in keys_t.c if c.name not in ("ciphertext", "updated_at")]
_SHOWN = frozenset(KeyPublic.model_fields)


@dataclass(frozen=True)
class SlotUsage:
    active: int
    uses: int
    last_used_at: datetime | None


def slot_usage(
    conn: Connection, now: datetime, key_ids: Sequence[int] | None = None
) -> dict[int, SlotUsage]:
    """Per key: unexpired leases, and the usage counters kept on its slots."""
    s = slots_t.c
    query = select(
        s.key_id,
        func.count(case((s.expires_at > now, 1))),
        func.coalesce(func.sum(s.uses), 0),
        func.max(s.last_acquired_at).label("last"),
    ).group_by(s.key_id)
    if key_ids is not None:
        query = query.where(s.key_id.in_(key_ids))
    return {
        key_id: SlotUsage(active, uses, as_utc(last))
        for key_id, active, uses, last in conn.execute(query).all()
    }


def to_public(
    row: Row[Any],
    usage: SlotUsage | None,
    buckets: Sequence[limits.BucketState],
    *,
    now: datetime,
) -> KeyPublic:
    data = {c.name: getattr(row, c.name) for c in _PUBLIC_COLUMNS if c.name in _SHOWN}
    data["utilization"] = max(
        (b.utilization for b in buckets if b.utilization is not None), default=None
    )
    active = usage.active if usage else 0
    if usage:
        data["uses"] = row.uses + usage.uses
        data["last_used_at"] = max(
            (t for t in (row.last_used_at, usage.last_used_at) if t), default=None
        )
    state = key_state(row, active_leases=active, now=now)
    if state == "unusable":
        data["cooling_reason"] = row.unusable_reason
    if state in ("available", "busy"):
        # A bucket the provider said is spent: the key waits for its reset like a cooling one
        # (not a bucket only the leases out on it fill: that key is busy, not cooling).
        alone = [dataclasses.replace(b, leases_out=0, tokens_out=0) for b in buckets]
        spent = [(b, b.refusal(now=now, need_tokens=1, reserve=row.reserve)) for b in alone]
        spent = [(b, why) for b, why in spent if why is not None]
        if spent:
            state = "cooling"
            data["cooling_until"] = max(b.room_at(1) for b, _ in spent)
            data["cooling_reason"] = "; ".join(why for _, why in spent if why)
    return KeyPublic(**data, state=state, active_leases=active)


def _public_rows(conn: Connection, query: Any, *, now: datetime) -> list[KeyPublic]:
    rows = conn.execute(query).all()
    ids = [r.id for r in rows]
    usage = slot_usage(conn, now, ids)
    buckets: dict[int, list[limits.BucketState]] = {i: [] for i in ids}
    for bucket in limits.limits_of(conn, now=now, key_ids=ids):
        buckets[bucket.key_id].append(bucket)
    return [to_public(r, usage.get(r.id), buckets[r.id], now=now) for r in rows]


def list_keys(conn: Connection, *, now: datetime, provider: str | None = None) -> list[KeyPublic]:
    query = select(*_PUBLIC_COLUMNS).order_by(keys_t.c.provider, keys_t.c.priority, keys_t.c.id)
    if provider is not None:
        query = query.where(keys_t.c.provider == provider)
    return _public_rows(conn, query, now=now)


def get_key(conn: Connection, key_id: int, *, now: datetime) -> KeyPublic:
    found = _public_rows(conn, select(*_PUBLIC_COLUMNS).where(keys_t.c.id == key_id), now=now)
    if not found:
        raise KeyNotFound(key_id)
    return found[0]


def add_key(conn: Connection, *, audit: AuditWriter, master: MasterKey, create: KeyCreate) -> int:
    secret = create.secret.get_secret_value()
    fp = fingerprint(secret)
    existing = conn.execute(select(keys_t.c.id).where(keys_t.c.fingerprint == fp)).scalar()
    if existing is not None:
        raise DuplicateKey(fp, existing)
    values = create.model_dump(exclude={"secret"})
    if conn.dialect.name == "sqlite":
        values["id"] = _unused_key_id(conn)
    try:
        key_id = conn.execute(
            keys_t.insert()
            .values(
                **values,
                ciphertext=master.encrypt(secret),
                fingerprint=fp,
                masked=mask(secret),
                uses=0,
                rate_limit_hits=0,
                created_at=audit.now,
                updated_at=audit.now,
            )
            .returning(keys_t.c.id)
        ).scalar_one()
    except IntegrityError as exc:  # a concurrent add of the same secret won the race
        raise DuplicateKey(fp) from exc
    _resize_slots(conn, key_id, create.max_concurrency, now=audit.now)
    audit.record(
        "key_added", key_id=key_id, name=create.name, provider=create.provider, fingerprint=fp
    )
    return key_id


def _unused_key_id(conn: Connection) -> int:
    """An id no key ever had. SQLite hands a deleted key's id to the next key added (its rowid is
    max(id) + 1 without AUTOINCREMENT), so a client's stale id, an audit row or a lease holder's
    record would name another key; PostgreSQL's identity never reuses one. Audit rows are never
    deleted and every key has one (key_added), so they remember the highest id ever given. The
    caller holds SQLite's write lock, so no other writer picks the same id."""
    audit_t = AuditEvent.__table__  # type: ignore[attr-defined]
    highest = max(
        conn.execute(select(func.max(keys_t.c.id))).scalar() or 0,
        conn.execute(select(func.max(audit_t.c.key_id))).scalar() or 0,
    )
    return int(highest) + 1


def lock_provider_keys(conn: Connection, provider: str) -> list[Row[Any]]:
    """Lock every key row of a provider (PostgreSQL; SQLite already holds the write lock), so
    'is this the last enabled key?' stays true until commit."""
    query = (
        select(keys_t.c.id, keys_t.c.enabled)
        .where(keys_t.c.provider == provider)
        .order_by(keys_t.c.id)
        .with_for_update()
    )
    return list(conn.execute(query).all())


def key_exists(conn: Connection, key_id: int) -> bool:
    return conn.execute(select(keys_t.c.id).where(keys_t.c.id == key_id)).scalar() is not None


def _provider_of(conn: Connection, key_id: int) -> str:
    provider = conn.execute(select(keys_t.c.provider).where(keys_t.c.id == key_id)).scalar()
    if provider is None:
        raise KeyNotFound(key_id)
    return provider


def _lock_key(conn: Connection, key_id: int, *, whole_provider: bool) -> list[Row[Any]]:
    """Lock a key for a change that must not interleave with its deletion: its slots, then its
    row, or with `whole_provider` every key row of its provider (for "is this the last enabled
    key?"). KeyNotFound when it is gone, also when a delete committed while we waited.

    Slots before key rows is the order everywhere (a release frees its slot, then drop_slots
    updates the key; acquirers skip locked rows and never wait), and a provider's rows are
    taken in id order: two changes never wait on each other in a circle. Returns the provider's
    key rows (id, enabled) when `whole_provider`, else []."""
    conn.execute(select(slots_t.c.id).where(slots_t.c.key_id == key_id).with_for_update()).all()
    if whole_provider:
        rows = lock_provider_keys(conn, _provider_of(conn, key_id))
        if key_id not in {r.id for r in rows}:
            raise KeyNotFound(key_id)
        return rows
    locked = conn.execute(
        select(keys_t.c.id).where(keys_t.c.id == key_id).with_for_update()
    ).scalar()
    if locked is None:
        raise KeyNotFound(key_id)
    return []


def _refuse_last_enabled(
    conn: Connection, key_id: int, provider_rows: list[Row[Any]], *, force: bool
) -> None:
    enabled = [r.id for r in provider_rows if r.enabled]
    if not force and enabled == [key_id]:
        raise LastEnabledKey(key_id, _provider_of(conn, key_id))


def update_key(
    conn: Connection,
    key_id: int,
    *,
    audit: AuditWriter,
    master: MasterKey,
    update: KeyUpdate,
    force: bool = False,
) -> None:
    changes = update.model_dump(exclude_unset=True, exclude={"secret"})
    # Locked first: a delete racing this update either finished (KeyNotFound) or waits for it
    # (before, resizing inserted slots for a key just deleted: a foreign key violation, a 500).
    provider_rows = _lock_key(conn, key_id, whole_provider=update.enabled is False)
    if "max_concurrency" in changes:
        _resize_slots(conn, key_id, changes["max_concurrency"], now=audit.now)
    if update.enabled is False:
        _refuse_last_enabled(conn, key_id, provider_rows, force=force)
    if update.secret is not None:
        secret = update.secret.get_secret_value()
        fp = fingerprint(secret)
        other = conn.execute(
            select(keys_t.c.id).where(keys_t.c.fingerprint == fp, keys_t.c.id != key_id)
        ).scalar()
        if other is not None:
            raise DuplicateKey(fp, other)
        changes |= {
            "ciphertext": master.encrypt(secret),
            "fingerprint": fp,
            "masked": mask(secret),
            "unusable_reason": None,
            "unusable_kind": None,
            "unusable_since": None,
        }
    if not changes:
        return
    conn.execute(
        keys_t.update().where(keys_t.c.id == key_id).values(**changes, updated_at=audit.now)
    )
    shown = sorted(k for k in changes if k != "ciphertext")
    audit.record(
        "key_updated",
        key_id=key_id,
        fields=shown,
        **{
            k: v
            for k, v in changes.items()
            if k in ("name", "priority", "max_concurrency", "enabled", "group", "fingerprint")
        },
    )


def delete_key(conn: Connection, key_id: int, *, audit: AuditWriter, force: bool = False) -> None:
    provider_rows = _lock_key(conn, key_id, whole_provider=True)
    row = conn.execute(select(keys_t.c.enabled, keys_t.c.name).where(keys_t.c.id == key_id)).one()
    if row.enabled:
        _refuse_last_enabled(conn, key_id, provider_rows, force=force)
    conn.execute(slots_t.delete().where(slots_t.c.key_id == key_id))
    conn.execute(keys_t.delete().where(keys_t.c.id == key_id))
    audit.record("key_deleted", key_id=key_id, name=row.name)


def reset_key(conn: Connection, key_id: int, *, audit: AuditWriter) -> None:
    updated = conn.execute(
        keys_t.update()
        .where(keys_t.c.id == key_id)
        .values(
            cooling_until=None,
            cooling_reason=None,
            unusable_reason=None,
            unusable_kind=None,
            unusable_since=None,
            unreset_limit_at=None,
            updated_at=audit.now,
        )
    ).rowcount
    if not updated:
        raise KeyNotFound(key_id)
    audit.record("key_reset", key_id=key_id)


def _resize_slots(conn: Connection, key_id: int, size: int, *, now: datetime) -> None:
    """Slots [0, size) exist. Extra slots are dropped when free; an occupied one stays until its
    lease ends (release deletes it) and blocks new leases on the key meanwhile (see leases.py)."""
    have = set(conn.execute(select(slots_t.c.slot).where(slots_t.c.key_id == key_id)).scalars())
    missing = [{"key_id": key_id, "slot": s, "uses": 0} for s in range(size) if s not in have]
    if missing:
        conn.execute(slots_t.insert(), missing)
    # FOR UPDATE: PostgreSQL re-checks "free" on each row once it is locked, so a slot an
    # acquirer took after this statement's snapshot is kept, not deleted with its live lease
    # under its holder (acquirers skip the rows locked here until commit).
    extra = (
        conn.execute(
            select(slots_t.c.id)
            .where(
                slots_t.c.key_id == key_id,
                slots_t.c.slot >= size,
                or_(slots_t.c.lease_id.is_(None), slots_t.c.expires_at <= now),
            )
            .with_for_update()
        )
        .scalars()
        .all()
    )
    if extra:
        drop_slots(conn, key_id, extra)


def drop_slots(conn: Connection, key_id: int, slot_ids: Sequence[int]) -> None:
    """Delete slots, keeping their usage counters on the key."""
    s = slots_t.c
    uses, last = conn.execute(
        select(func.coalesce(func.sum(s.uses), 0), func.max(s.last_acquired_at)).where(
            s.id.in_(slot_ids)
        )
    ).one()
    current = conn.execute(select(keys_t.c.last_used_at).where(keys_t.c.id == key_id)).scalar()
    newest = max((t for t in (current, as_utc(last)) if t), default=None)
    conn.execute(
        keys_t.update()
        .where(keys_t.c.id == key_id)
        .values(uses=keys_t.c.uses + uses, last_used_at=newest)
    )
    conn.execute(slots_t.delete().where(s.id.in_(slot_ids)))
