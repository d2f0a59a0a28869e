"""Run waits: when many runs wait for the same provider's reset, they resume staggered to the
capacity coming back, the longest-waiting first, instead of all at once onto a few keys."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, func, or_, select, text

from keystore.eligibility import usable_at
from keystore.keys import keys_t
from keystore.models import RunWait

__all__ = ["clear_wait", "register_wait", "returning_capacity"]

waits_t = RunWait.__table__  # type: ignore[attr-defined]
_PG_WAITS_LOCK = 0x77616974  # "wait"
STALE_AFTER = timedelta(hours=1)  # a wait whose run never came back (cancelled, deleted)


def returning_capacity(conn: Connection, provider: str, at: datetime) -> int:
    """Lease slots of the provider's enabled, usable keys that are not cooling at `at`."""
    total = conn.execute(
        select(func.coalesce(func.sum(keys_t.c.max_concurrency), 0)).where(
            keys_t.c.provider == provider, usable_at(at)
        )
    ).scalar_one()
    return int(total)


def register_wait(
    conn: Connection,
    *,
    run_id: str,
    provider: str,
    reset_at: datetime,
    now: datetime,
    stagger_s: float,
) -> datetime:
    """Queue the run and return when it should resume: the first `capacity` waiters (in the
    order they started waiting) at `reset_at`, the next batch `stagger_s` later, and so on.
    A run that defers again keeps its place and its `waiting_since`."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_WAITS_LOCK})
    conn.execute(waits_t.delete().where(waits_t.c.resume_at < now - STALE_AFTER))
    mine = conn.execute(
        select(waits_t.c.waiting_since).where(waits_t.c.run_id == run_id)
    ).scalar_one_or_none()
    since = mine or now
    ahead = conn.execute(
        select(func.count()).where(
            waits_t.c.provider == provider,
            waits_t.c.run_id != run_id,
            waits_t.c.resume_at >= now,
            or_(
                waits_t.c.waiting_since < since,
                and_(waits_t.c.waiting_since == since, waits_t.c.run_id < run_id),
            ),
        )
    ).scalar_one()
    capacity = max(1, returning_capacity(conn, provider, reset_at))
    resume_at = reset_at + timedelta(seconds=(ahead // capacity) * stagger_s)
    conn.execute(waits_t.delete().where(waits_t.c.run_id == run_id))
    conn.execute(
        waits_t.insert().values(
            run_id=run_id,
            provider=provider,
            waiting_since=since,
            reset_at=reset_at,
            resume_at=resume_at,
        )
    )
    return resume_at


def clear_wait(conn: Connection, run_id: str) -> datetime | None:
    """Forget the run's wait; returns when it was due to resume (None: it was not waiting)."""
    resume_at = conn.execute(
        select(waits_t.c.resume_at).where(waits_t.c.run_id == run_id)
    ).scalar_one_or_none()
    if resume_at is not None:
        conn.execute(waits_t.delete().where(waits_t.c.run_id == run_id))
    return resume_at
