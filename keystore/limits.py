"""Limit state from every response: what each key's buckets said, and what that admits now.

`record_readings` stores what one response said (newer observations win; responses can arrive
out of order). The rest are SQL expressions over a key row, used by acquisition (in its WHERE and
ORDER BY, so admission and choice happen in the same statement that takes the slot) and by
`candidates` (as columns, so `explain` shows exactly what acquisition decided):

- `blocked`: a bucket refuses the next request before its reset. A requests bucket refuses when
  its last `remaining`, minus the leases out on it (each may send a request the reading does not
  count yet), is below one; a token bucket when that minus their announced tokens is below the
  request's `input_tokens`; an output-tokens bucket at zero; a subscription window when it is
  rejected or used up to the key's `reserve`. Counting every lease out, not only those taken
  after the reading, is deliberate: a request sent before the reading may be answered after it,
  and counting it twice for the moment between its answer and its release costs far less than a
  429. The leases out are what stops a herd: waiters woken by the same reset are admitted only as
  far as the bucket holds.
- Keys of one `group` share the provider's limits: a reading from one is stored for all of
  them, and the leases out on any of them count against each.
- Nothing counts past its reset: a bucket is full again then. Before it, a token bucket (tokens,
  input-tokens) is projected to refill in a straight line from what it said to full at its reset
  (the rate its limit and reset imply: Anthropic's buckets refill continuously, and its whole-second
  resets only make the line a little slower than the real one), so a request that fits goes out
  as soon as the bucket holds it, not at the full refill. A requests bucket is not: a fixed window
  holds nothing more until it resets.
- `utilization`: the most-used bucket whose reset is still ahead (so it ages out at the reset).
- `window_reset`: the soonest reset among a subscription's windows (its unused quota expires
  first, so such a key is preferred).

Until a key has answered once it has no rows and is used normally: one probe per key is the only
429 this can cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from keystore.errors import KeyNotFound
from keystore.models import Key, KeyLimit, LeaseSlot
from keystore.ratelimits.readings import UNIFIED_PREFIX, BucketReading
from keystore.types import UTCDateTime, as_utc, epoch_s

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
keys_t = Key.__table__  # type: ignore[attr-defined]
REQUEST_BUCKETS = ("requests",)
TOKEN_BUCKETS = ("tokens", "input-tokens")
OUTPUT_BUCKETS = ("output-tokens",)


def _sharing() -> Any:
    """The key (bind parameter p_key) and the keys of its group, if it has one."""
    k, me = keys_t.c, keys_t.alias("me")
    group = select(me.c.group).where(me.c.id == bindparam("p_key")).scalar_subquery()
    provider = select(me.c.provider).where(me.c.id == bindparam("p_key")).scalar_subquery()
    return select(k.id).where(
        or_(k.id == bindparam("p_key"), and_(k.group == group, k.provider == provider))
    )


def _upsert(dialect: Any) -> Any:
    """Insert a bucket's reading, or replace one read earlier (never one read later: answers
    can be recorded out of order)."""
    insert = dialect.insert(limits_t)
    fields = ("limit", "remaining", "utilization", "reset_at", "observed_at", "rejected")
    return insert.on_conflict_do_update(
        index_elements=[limits_t.c.key_id, limits_t.c.bucket],
        set_={name: insert.excluded[name] for name in fields},
        where=limits_t.c.observed_at <= insert.excluded.observed_at,
    )


# Built once: building them per response cost more than running them.
_SHARING = _sharing()
_UPSERT = {"postgresql": _upsert(postgresql), "sqlite": _upsert(sqlite)}


def record_readings(
    conn: Connection, key_id: int, readings: Iterable[BucketReading], *, observed_at: datetime
) -> None:
    kept = [r for r in readings if r.reset_at is not None]
    if not kept:
        return
    sharing = list(conn.execute(_SHARING, {"p_key": key_id}).scalars())
    if not sharing:  # the key itself is gone (deleted while its call was out)
        raise KeyNotFound(key_id)
    rows = [
        {
            "key_id": sharer,
            "bucket": r.bucket,
            "limit": r.limit,
            "remaining": r.remaining,
            "utilization": r.utilization,
            "reset_at": r.reset_at,
            "observed_at": observed_at,
            "rejected": r.rejected,
        }
        for r in kept
        for sharer in sharing
    ]
    conn.execute(_UPSERT[conn.dialect.name], rows)


def _out_on(keys: Any, now: Any, exclude_lease: Any) -> tuple[Any, Any]:
    """(leases, their announced tokens) out on the key of the row `keys` (the outer query's
    keys table) or on any key sharing its group; the lease `exclude_lease` (its holder is the
    one asking) left out."""
    s = _slots_t.c
    sharer = keys_t.alias("sharer")
    shares = or_(
        sharer.c.id == keys.id,
        and_(
            keys.group.is_not(None),
            sharer.c.group == keys.group,
            sharer.c.provider == keys.provider,
        ),
    )
    out = [shares, s.expires_at > now]
    if exclude_lease is not None:
        out.append(s.lease_id != exclude_lease)
    joined = _slots_t.join(sharer, sharer.c.id == s.key_id)
    leases = select(func.count()).select_from(joined).where(*out).correlate(keys_t)
    tokens = (
        select(func.coalesce(func.sum(s.reserved_tokens), 0))
        .select_from(joined)
        .where(*out)
        .correlate(keys_t)
    )
    return leases.scalar_subquery(), tokens.scalar_subquery()


def blocked(
    keys: Any, now: Any, need_tokens: Any, exclude_lease: Any = None
) -> ColumnElement[bool]:
    """True when one of the key's buckets refuses a request of `need_tokens` input tokens now
    (the lease `exclude_lease` not counted among those out on it)."""
    b = limits_t.alias("bucket")
    leases_out, tokens_out = _out_on(keys, now, exclude_lease)
    refuses = or_(
        and_(b.c.bucket.in_(REQUEST_BUCKETS), b.c.remaining - leases_out < 1),
        and_(b.c.bucket.in_(TOKEN_BUCKETS), _projected(b.c, now) - tokens_out < need_tokens),
        and_(b.c.bucket.in_(OUTPUT_BUCKETS), b.c.remaining < 1),
        and_(
            b.c.bucket.startswith(UNIFIED_PREFIX),
            or_(b.c.rejected.is_(True), b.c.utilization >= literal(1.0) - keys.reserve),
        ),
    )
    return exists().where(b.c.key_id == keys.id, b.c.reset_at > now, refuses)


def _projected(b: Any, now: Any) -> Any:
    """What a token bucket holds at `now`: its reading refilled in a straight line to `limit` at
    `reset_at` (the reading itself without a limit). The SQL twin of `BucketState.projected`."""
    span = epoch_s(b.reset_at) - epoch_s(b.observed_at)
    refilled = b.remaining + (b.limit - b.remaining) * (
        (epoch_s(now) - epoch_s(b.observed_at)) / span
    )
    return case(
        (and_(b.limit.is_not(None), b.limit > b.remaining, span > 0), refilled), else_=b.remaining
    )


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
    """One bucket as `explain` and the API show it, with the leases out on it (their requests
    may not be counted in `remaining` yet)."""

    key_id: int
    bucket: str
    limit: float | None
    remaining: float | None
    utilization: float | None
    reset_at: datetime
    observed_at: datetime
    rejected: bool
    leases_out: int
    tokens_out: int

    def _refills(self) -> bool:
        return (
            self.bucket in TOKEN_BUCKETS
            and self.limit is not None
            and self.remaining is not None
            and self.limit > self.remaining
            and self.reset_at > self.observed_at
        )

    def projected(self, now: datetime) -> float | None:
        """What the bucket holds at `now` (see the module docstring; mirrors `_projected`)."""
        if not self._refills():
            return self.remaining
        assert self.limit is not None and self.remaining is not None
        span = (self.reset_at - self.observed_at).total_seconds()
        elapsed = (now - self.observed_at).total_seconds()
        return self.remaining + (self.limit - self.remaining) * (elapsed / span)

    def room_at(self, need: float) -> datetime:
        """When the bucket holds `need` (a token bucket refilling toward its reset; every other
        bucket at its reset)."""
        if not self._refills():
            return self.reset_at
        assert self.limit is not None and self.remaining is not None
        span = (self.reset_at - self.observed_at).total_seconds()
        share = max(0.0, (need - self.remaining) / (self.limit - self.remaining))
        return min(self.reset_at, self.observed_at + timedelta(seconds=share * span))

    def refusal(self, *, now: datetime, need_tokens: int, reserve: float) -> str | None:
        """Why this bucket refuses a request now (None: it does not). Mirrors `blocked`."""
        left = self.remaining
        if self.bucket in REQUEST_BUCKETS and left is not None:
            if left - self.leases_out < 1:
                return f"requests {left:g} left, {self.leases_out} in flight"
        elif self.bucket in TOKEN_BUCKETS and left is not None:
            held = self.projected(now)
            assert held is not None
            if held - self.tokens_out < need_tokens:
                return (
                    f"{self.bucket} {math.floor(held)} left, {self.tokens_out} reserved,"
                    f" {need_tokens} needed"
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
    conn: Connection,
    *,
    now: datetime,
    key_ids: Sequence[int] | None = None,
    exclude_lease: str | None = None,
) -> list[BucketState]:
    """Every bucket whose reset is still ahead, with the leases out on it (but `exclude_lease`)."""
    query = _LIMITS_OF[(key_ids is not None, exclude_lease is not None)]
    params: dict[str, Any] = {"p_now": now}
    if key_ids is not None:
        params["p_key_ids"] = list(key_ids)
    if exclude_lease is not None:
        params["p_exclude"] = exclude_lease
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
            leases_out=int(row.leases_out),
            tokens_out=int(row.tokens_out),
        )
        for row in conn.execute(query, params)
    ]


def _limits_of_query(*, some_keys: bool, excluding: bool) -> Any:
    """`limits_of`'s statement (bind parameters: p_now, p_key_ids, p_exclude), built once per
    shape: composing it costs more than running it."""
    b = limits_t.c
    now = bindparam("p_now", type_=UTCDateTime)
    exclude: Any = bindparam("p_exclude") if excluding else None
    leases_out, tokens_out = _out_on(keys_t.c, now, exclude)
    query = (
        select(limits_t, leases_out.label("leases_out"), tokens_out.label("tokens_out"))
        .join(keys_t, keys_t.c.id == b.key_id)
        .where(b.reset_at > now)
        .order_by(b.key_id, b.bucket)
    )
    if some_keys:
        query = query.where(b.key_id.in_(bindparam("p_key_ids", expanding=True)))
    return query


_LIMITS_OF = {
    (some_keys, excluding): _limits_of_query(some_keys=some_keys, excluding=excluding)
    for some_keys in (False, True)
    for excluding in (False, True)
}


def _aware(value: Any) -> datetime:
    moment = as_utc(value)
    assert moment is not None
    return moment
