"""Cooling: take keys out of the pool on refusals until their reset, find the earliest reset.

Rules (DESIGN.md "Marking a limit"):
- cooling_until = max(old, new): a later deadline is never shortened by a shorter signal;
- a signal without a reset cools for `no_reset_cooldown_s`;
- keys sharing a `group` share the provider's org-wide limits, so they cool together;
- a billing-style quota that only a person can lift (not retryable, no reset) makes the key
  unusable until `reset`;
- 429s without reset information on `IP_WIDE_GROUPS` or more groups within `IP_WIDE_WINDOW_S`
  point at an IP-wide limit: the provider's keys cool briefly, and nobody is benched for good."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from keystore.audit import AuditWriter
from keystore.eligibility import cooling_at
from keystore.errors import KeyNotFound
from keystore.keys import keys_t
from keystore.models import UnusableKind
from keystore.ratelimits.signal import RateLimitSignal

__all__ = [
    "IP_WIDE_GROUPS",
    "IP_WIDE_WINDOW_S",
    "Marked",
    "Scope",
    "earliest_reset",
    "mark_limited",
    "set_unusable",
]

IP_WIDE_GROUPS = 3
IP_WIDE_WINDOW_S = 5.0


class Scope(StrEnum):
    """How far a limit signal reached."""

    NONE = "none"  # nothing cools (overload, a request too large)
    KEY = "key"  # this key cools
    GROUP = "group"  # every key of its group cools (an org-wide limit)
    IP = "ip"  # every key of the provider cools briefly (429s without reset on many groups)
    UNUSABLE = "unusable"  # out of the pool until a person resets it


@dataclass(frozen=True)
class Marked:
    """What mark_limited did: which keys now cool and until when (None: nothing cools)."""

    key_ids: tuple[int, ...]
    cooling_until: datetime | None
    scope: Scope


def _group_of(row: Any) -> str:
    return row.group if row.group else f"key:{row.id}"


def _recent_unreset_groups(conn: Connection, *, provider: str, now: datetime) -> set[str]:
    """Groups of the provider whose keys got a limit without reset information just now."""
    since = now - timedelta(seconds=IP_WIDE_WINDOW_S)
    rows = conn.execute(
        select(keys_t.c.id, keys_t.c.group).where(
            keys_t.c.provider == provider, keys_t.c.unreset_limit_at >= since
        )
    ).all()
    return {_group_of(row) for row in rows}


def mark_limited(
    conn: Connection,
    key_id: int,
    signal: RateLimitSignal,
    *,
    audit: AuditWriter,
    no_reset_cooldown_s: float,
    run_id: str | None = None,
) -> Marked:
    now = audit.now
    row = conn.execute(select(keys_t).where(keys_t.c.id == key_id)).one_or_none()
    if row is None:
        raise KeyNotFound(key_id)
    group = _group_of(row)
    bump: dict[str, Any] = {"rate_limit_hits": keys_t.c.rate_limit_hits + 1, "updated_at": now}
    if signal.cools_key and signal.resets_at is None:
        bump["unreset_limit_at"] = now
    conn.execute(keys_t.update().where(keys_t.c.id == key_id).values(**bump))

    marked = Marked((), None, Scope.NONE)
    if signal.cools_key:
        if signal.resets_at is None and not signal.retryable and signal.kind == "quota_exhausted":
            marked = _mark_unusable(conn, row, signal, now=now)
        else:
            marked = _cool(conn, row, signal, now=now, no_reset_cooldown_s=no_reset_cooldown_s)
        if signal.resets_at is None:
            groups = _recent_unreset_groups(conn, provider=row.provider, now=now)
            if len(groups) >= IP_WIDE_GROUPS:
                marked = _cool_ip_wide(conn, row.provider, now=now, cooldown_s=no_reset_cooldown_s)
    audit.record(
        "key_rate_limited",
        key_id=key_id,
        run_id=run_id,
        provider=row.provider,
        group=group,
        kind=signal.kind,
        resets_at=signal.resets_at,
        source=signal.source,
        retryable=signal.retryable,
        utilization=signal.utilization,
        scope=marked.scope.value,
        cooled=list(marked.key_ids),
        cooling_until=marked.cooling_until,
    )
    return marked


def _cool(
    conn: Connection,
    row: Any,
    signal: RateLimitSignal,
    *,
    now: datetime,
    no_reset_cooldown_s: float,
) -> Marked:
    until = signal.resets_at or now + timedelta(seconds=no_reset_cooldown_s)
    if until <= now:
        until = now + timedelta(seconds=1)  # "reset now" still means "not this instant"
    target = keys_t.c.id == row.id
    scope = Scope.KEY
    if row.group:
        target = and_(keys_t.c.provider == row.provider, keys_t.c.group == row.group)
        scope = Scope.GROUP
    reason = f"{signal.kind} ({signal.source})"
    ids = tuple(
        conn.execute(
            keys_t.update()
            .where(target, or_(keys_t.c.cooling_until.is_(None), keys_t.c.cooling_until < until))
            .values(cooling_until=until, cooling_reason=reason, updated_at=now)
            .returning(keys_t.c.id)
        ).scalars()
    )
    effective = conn.execute(select(keys_t.c.cooling_until).where(keys_t.c.id == row.id)).scalar()
    return Marked(ids, effective, scope)


def _mark_unusable(conn: Connection, row: Any, signal: RateLimitSignal, *, now: datetime) -> Marked:
    reason = (
        f"{signal.kind} ({signal.source}): needs a person; `keyrelay keys reset {row.id}` after"
    )
    _bench(conn, row.id, reason=reason, kind="quota", now=now)
    return Marked((row.id,), None, Scope.UNUSABLE)


def _bench(conn: Connection, key_id: int, *, reason: str, kind: UnusableKind, now: datetime) -> int:
    return conn.execute(
        keys_t.update()
        .where(keys_t.c.id == key_id)
        .values(unusable_reason=reason, unusable_kind=kind, unusable_since=now, updated_at=now)
    ).rowcount


def _cool_ip_wide(conn: Connection, provider: str, *, now: datetime, cooldown_s: float) -> Marked:
    until = now + timedelta(seconds=cooldown_s)
    reason = "ip_wide (429s without reset on many keys)"
    mine = and_(keys_t.c.provider == provider, keys_t.c.enabled.is_(True))
    conn.execute(
        keys_t.update()
        .where(mine, or_(keys_t.c.cooling_until.is_(None), keys_t.c.cooling_until < until))
        .values(cooling_until=until, cooling_reason=reason, updated_at=now)
    )
    # A quota that "only a person can lift" seen during an IP-wide limit was the IP's doing.
    conn.execute(
        keys_t.update()
        .where(
            mine,
            keys_t.c.unusable_kind == "quota",
            keys_t.c.unusable_since >= now - timedelta(seconds=IP_WIDE_WINDOW_S),
        )
        .values(unusable_reason=None, unusable_kind=None, unusable_since=None)
    )
    ids = tuple(
        conn.execute(
            select(keys_t.c.id).where(mine, keys_t.c.cooling_until >= until).order_by(keys_t.c.id)
        ).scalars()
    )
    return Marked(ids, until, Scope.IP)


def set_unusable(
    conn: Connection,
    key_id: int,
    *,
    reason: str,
    kind: UnusableKind,
    audit: AuditWriter,
    run_id: str | None = None,
) -> None:
    if not _bench(conn, key_id, reason=reason, kind=kind, now=audit.now):
        raise KeyNotFound(key_id)
    audit.record("key_unusable", key_id=key_id, run_id=run_id, reason=reason, kind=kind)


def earliest_reset(conn: Connection, provider: str, *, now: datetime) -> datetime | None:
    """Earliest cooling_until among the provider's enabled, usable keys that are cooling now."""
    return conn.execute(
        select(func.min(keys_t.c.cooling_until)).where(
            keys_t.c.provider == provider, cooling_at(now)
        )
    ).scalar()
