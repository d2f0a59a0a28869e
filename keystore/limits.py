"""Limit state from every response: what each key's buckets said, and what that admits now.

`record_readings` stores what one response said (newer observations win; responses can arrive
out of order). The rest are SQL expressions over a key row, used by acquisition (in its WHERE and
ORDER BY, so admission and choice happen in the same statement that takes the slot) and by
`candidates` (as columns, so `explain` shows exactly what acquisition decided):

- `blocked`: a bucket refuses the next request before its reset. A requests bucket refuses when
  its last `remaining`, minus the leases taken since that observation (their requests are not
  counted in it yet), is below one; a token bucket when that minus their announced tokens is below
  the request's `input_tokens`; an output-tokens bucket at zero; a subscription window when it is
  rejected or used up to the key's `reserve`. Leases taken since the observation are what stops a
  herd: waiters woken by the same reset are admitted only as far as the bucket holds.
- Nothing counts past its reset: a bucket is full again then (the safe model for fixed windows
  and token buckets alike: a bucket is never assumed to hold more before its reset than it said).
- `utilization`: the most-used bucket whose reset is still ahead (so it ages out at the reset).
- `window_reset`: the soonest reset among a subscription's windows (its unused quota expires
  first, so such a key is preferred).

Until a key has answered once it has no rows and is used normally: one probe per key is the only
429 this can cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from keystore.models import KeyLimit, LeaseSlot
from keystore.ratelimits.readings import UNIFIED_PREFIX, BucketReading
from keystore.types import as_utc

__all__ = [
    "BucketState",
    "blocked",
    "limits_of",
    "record_readings",
    "utilization",
    "window_reset",
]

limits_t = KeyLimit.__table__  # type: ignore[attr-defined]
_slots_t = LeaseSlot.__table__  # type: ignore[attr-defined]
REQUEST_BUCKETS = ("requests",)
TOKEN_BUCKETS = ("tokens", "input-tokens")
OUTPUT_BUCKETS = ("output-tokens",)


def record_readings(
    conn: Connection, key_id: int, readings: Iterable[BucketReading], *, observed_at: datetime
) -> None:
    rows = [
        {
            "key_id": key_id,
            "bucket": r.bucket,
            "limit": r.limit,
            "remaining": r.remaining,
            "utilization": r.utilization,
            "reset_at": r.reset_at,
            "observed_at": observed_at,
            "rejected": r.rejected,
        }
        for r in readings
        if r.reset_at is not None
    ]
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    insert = dialect.insert(limits_t)
    upsert = insert.on_conflict_do_update(
        index_elements=[limits_t.c.key_id, limits_t.c.bucket],
        set_={
            name: insert.excluded[name]
            for name in ("limit", "remaining", "utilization", "reset_at", "observed_at", "rejected")
        },
        where=limits_t.c.observed_at <= insert.excluded.observed_at,
    )
    conn.execute(upsert, rows)


def _since_observation(key_id: Any, now: Any, observed_at: Any) -> Any:
    """Leases of the key taken after the bucket was observed and still out."""
    s = _slots_t.c
    return and_(s.key_id == key_id, s.expires_at > now, s.acquired_at > observed_at)


def blocked(keys: Any, now: Any, need_tokens: Any) -> ColumnElement[bool]:
    """True when one of the key's buckets refuses a request of `need_tokens` input tokens now."""
    b = limits_t.alias("bucket")
    s = _slots_t.c
    since = _since_observation(b.c.key_id, now, b.c.observed_at)
    leases_since = select(func.count()).where(since).scalar_subquery()
    tokens_since = select(func.coalesce(func.sum(s.reserved_tokens), 0)).where(since)
    refuses = or_(
        and_(b.c.bucket.in_(REQUEST_BUCKETS), b.c.remaining - leases_since < 1),
        and_(
            b.c.bucket.in_(TOKEN_BUCKETS),
            b.c.remaining - tokens_since.scalar_subquery() < need_tokens,
        ),
        and_(b.c.bucket.in_(OUTPUT_BUCKETS), b.c.remaining < 1),
        and_(
            b.c.bucket.startswith(UNIFIED_PREFIX),
            or_(b.c.rejected.is_(True), b.c.utilization >= literal(1.0) - keys.reserve),
        ),
    )
    return exists().where(b.c.key_id == keys.id, b.c.reset_at > now, refuses)


def utilization(keys: Any, now: Any) -> Any:
    """The most-used bucket's utilization whose reset is still ahead, else 0."""
    b = limits_t.alias("used")
    return (
        select(func.coalesce(func.max(b.c.utilization), 0.0))
        .where(b.c.key_id == keys.id, b.c.reset_at > now)
        .scalar_subquery()
    )


def window_reset(keys: Any, now: Any) -> Any:
    """The soonest reset among the key's subscription windows still ahead (None: no windows)."""
    b = limits_t.alias("window")
    return (
        select(func.min(b.c.reset_at))
        .where(b.c.key_id == keys.id, b.c.reset_at > now, b.c.bucket.startswith(UNIFIED_PREFIX))
        .scalar_subquery()
    )


@dataclass(frozen=True)
class BucketState:
    """One bucket as `explain` and the API show it (in-flight: leases taken since the reading)."""

    key_id: int
    bucket: str
    limit: float | None
    remaining: float | None
    utilization: float | None
    reset_at: datetime
    observed_at: datetime
    rejected: bool
    leases_since: int
    tokens_since: int

    def refusal(self, *, need_tokens: int, reserve: float) -> str | None:
        """Why this bucket refuses a request now (None: it does not). Mirrors `blocked`."""
        left = self.remaining
        if self.bucket in REQUEST_BUCKETS and left is not None:
            if left - self.leases_since < 1:
                return f"requests {left:g} left, {self.leases_since} in flight"
        elif self.bucket in TOKEN_BUCKETS and left is not None:
            if left - self.tokens_since < need_tokens:
                return (
                    f"{self.bucket} {left:g} left, {self.tokens_since} reserved, "
                    f"{need_tokens} needed"
                )
        elif self.bucket in OUTPUT_BUCKETS and left is not None:
            if left < 1:
                return f"{self.bucket} used up"
        elif self.bucket.startswith(UNIFIED_PREFIX):
            if self.rejected:
                return f"{self.bucket} window rejected"
            used = self.utilization
            if used is not None and used >= 1.0 - reserve:
                kept = f" (reserve {reserve:g})" if reserve else ""
                return f"{self.bucket} window {used:.0%} used{kept}"
        return None


def limits_of(
    conn: Connection, *, now: datetime, key_ids: Sequence[int] | None = None
) -> list[BucketState]:
    """Every bucket whose reset is still ahead, with what was leased since it was read."""
    b = limits_t.c
    s = _slots_t.c
    since = _since_observation(b.key_id, now, b.observed_at)
    leases_since = select(func.count()).where(since).scalar_subquery()
    tokens_since = select(func.coalesce(func.sum(s.reserved_tokens), 0)).where(since)
    query = (
        select(
            limits_t,
            leases_since.label("leases_since"),
            tokens_since.scalar_subquery().label("tokens_since"),
        )
        .where(b.reset_at > now)
        .order_by(b.key_id, b.bucket)
    )
    if key_ids is not None:
        query = query.where(b.key_id.in_(key_ids))
    return [
        BucketState(
            key_id=row.key_id,
            bucket=row.bucket,
            limit=row.limit,
            remaining=row.remaining,
            utilization=row.utilization,
            reset_at=_aware(row.reset_at),
            observed_at=_aware(row.observed_at),
            rejected=bool(row.rejected),
            leases_since=int(row.leases_since),
            tokens_since=int(row.tokens_since),
        )
        for row in conn.execute(query)
    ]


def _aware(value: Any) -> datetime:
    moment = as_utc(value)
    assert moment is not None
    return moment
