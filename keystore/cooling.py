"""Limit state: cool keys on rate-limit signals, remember utilization, find the earliest reset.

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
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from keystore.audit import AuditWriter
from keystore.errors import KeyNotFound
from keystore.keys import keys_t
from keystore.models import AuditEvent
from keystore.ratelimits.signal import RateLimitSignal

__all__ = [
    "IP_WIDE_GROUPS",
    "IP_WIDE_WINDOW_S",
    "Marked",
    "earliest_reset",
    "mark_limited",
    "record_utilization",
    "set_unusable",
]

IP_WIDE_GROUPS = 3
IP_WIDE_WINDOW_S = 5.0
_audit_t = AuditEvent.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Marked:
    """What mark_limited did: which keys now cool and until when (None: nothing cools)."""

    key_ids: tuple[int, ...]
    cooling_until: datetime | None
    scope: str  # "none" | "key" | "group" | "ip" | "unusable"


def _group_of(row: Any) -> str:
    return row.group if row.group else f"key:{row.id}"


def _recent_unreset_groups(conn: Connection, *, provider: str, now: datetime) -> set[str]:
    since = now - timedelta(seconds=IP_WIDE_WINDOW_S)
    rows = conn.execute(
        select(_audit_t.c.details).where(
            _audit_t.c.type == "key_rate_limited", _audit_t.c.at >= since
        )
    ).scalars()
    return {
        d["group"]
        for d in rows
        if d.get("provider") == provider and d.get("resets_at") is None and d.get("group")
    }


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
    if signal.utilization is not None:
        bump["utilization"] = signal.utilization
    conn.execute(keys_t.update().where(keys_t.c.id == key_id).values(**bump))

    marked = Marked((), None, "none")
    if signal.cools_key:
        if signal.resets_at is None and not signal.retryable and signal.kind == "quota_exhausted":
            marked = _mark_unusable(conn, row, signal, now=now)
        else:
            marked = _cool(conn, row, signal, now=now, no_reset_cooldown_s=no_reset_cooldown_s)
        if signal.resets_at is None:
            groups = _recent_unreset_groups(conn, provider=row.provider, now=now) | {group}
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
        scope=marked.scope,
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
    scope = "key"
    if row.group:
        target = and_(keys_t.c.provider == row.provider, keys_t.c.group == row.group)
        scope = "group"
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
    conn.execute(
        keys_t.update().where(keys_t.c.id == row.id).values(unusable_reason=reason, updated_at=now)
    )
    return Marked((row.id,), None, "unusable")


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
            keys_t.c.unusable_reason.like("quota_exhausted%"),
            keys_t.c.updated_at >= now - timedelta(seconds=IP_WIDE_WINDOW_S),
        )
        .values(unusable_reason=None)
    )
    ids = tuple(
        conn.execute(
            select(keys_t.c.id).where(mine, keys_t.c.cooling_until >= until).order_by(keys_t.c.id)
        ).scalars()
    )
    return Marked(ids, until, "ip")


def set_unusable(
    conn: Connection, key_id: int, *, reason: str, audit: AuditWriter, run_id: str | None = None
) -> None:
    updated = conn.execute(
        keys_t.update()
        .where(keys_t.c.id == key_id)
        .values(unusable_reason=reason, updated_at=audit.now)
    ).rowcount
    if not updated:
        raise KeyNotFound(key_id)
    audit.record("key_unusable", key_id=key_id, run_id=run_id, reason=reason)


def record_utilization(conn: Connection, key_id: int, utilization: float, *, now: datetime) -> None:
    conn.execute(
        keys_t.update()
        .where(keys_t.c.id == key_id)
        .values(utilization=max(0.0, min(1.0, utilization)), updated_at=now)
    )


def earliest_reset(conn: Connection, provider: str, *, now: datetime) -> datetime | None:
    """Earliest cooling_until among the provider's enabled, usable keys that are cooling now."""
    return conn.execute(
        select(func.min(keys_t.c.cooling_until)).where(
            keys_t.c.provider == provider,
            keys_t.c.enabled.is_(True),
            keys_t.c.unusable_reason.is_(None),
            keys_t.c.cooling_until > now,
        )
    ).scalar()
