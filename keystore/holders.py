"""Who holds the pool's leases right now: every unexpired lease with its key and holder.

A lease is an occupied slot (see leases.py); a slot whose lease expired unreleased still names
its old holder until someone reclaims it, so "unexpired" is part of the question, as it is for
every count of active leases."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Connection, select

from keystore.keys import keys_t, slots_t

__all__ = ["LeaseHolderPublic", "list_active_leases"]


class LeaseHolderPublic(BaseModel):
    """One lease out, as the API and the pool page may show it (no lease id: renewing and
    releasing are the holder's business; no secret)."""

    key_id: int
    key_name: str
    provider: str
    holder: str | None
    acquired_at: datetime | None
    expires_at: datetime


def list_active_leases(
    conn: Connection, *, now: datetime, provider: str | None = None
) -> list[LeaseHolderPublic]:
    """Unexpired leases, ordered by provider, key, then oldest first."""
    k, s = keys_t.c, slots_t.c
    query = (
        select(s.key_id, k.name, k.provider, s.holder, s.acquired_at, s.expires_at)
        .join(keys_t, k.id == s.key_id)
        .where(s.lease_id.is_not(None), s.expires_at > now)
        .order_by(k.provider, s.key_id, s.acquired_at, s.slot)
    )
    if provider is not None:
        query = query.where(k.provider == provider)
    return [
        LeaseHolderPublic(
            key_id=row.key_id,
            key_name=row.name,
            provider=row.provider,
            holder=row.holder,
            acquired_at=row.acquired_at,
            expires_at=row.expires_at,
        )
        for row in conn.execute(query).all()
    ]
