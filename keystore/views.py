"""Read-only views of the pool: per-provider counts (`status`) and why each key is or is not
eligible right now (`explain`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Connection, select

from keystore import candidates, cooling, keys, limits
from keystore.keys import keys_t
from keystore.models import PROVIDERS, KeyPublic

__all__ = [
    "BucketPublic",
    "CandidatePublic",
    "Explanation",
    "PoolStatus",
    "ProviderStatus",
    "bucket_views",
    "explain",
    "status",
]


class ProviderStatus(BaseModel):
    total: int
    available: int
    busy: int
    cooling: int
    disabled: int  # includes keys that are unusable (failed to decrypt, need a person)
    earliest_reset: datetime | None


class PoolStatus(BaseModel):
    providers: dict[str, ProviderStatus]
    keys: list[KeyPublic]


class BucketPublic(BaseModel):
    """What a key's provider last said about one of its limits (until `reset_at`), and the
    leases taken since that reading (not yet counted in `remaining`)."""

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


class CandidatePublic(BaseModel):
    id: int
    eligible: bool
    reason: str


class Explanation(BaseModel):
    chosen: int | None
    candidates: list[CandidatePublic]


def status(conn: Connection, *, now: datetime) -> PoolStatus:
    listed = keys.list_keys(conn, now=now)
    providers = {}
    for provider in PROVIDERS:
        mine = [k for k in listed if k.provider == provider]
        count = {
            s: sum(1 for k in mine if k.state == s)
            for s in ("available", "busy", "cooling", "disabled", "unusable")
        }
        providers[provider] = ProviderStatus(
            total=len(mine),
            available=count["available"],
            busy=count["busy"],
            cooling=count["cooling"],
            disabled=count["disabled"] + count["unusable"],
            earliest_reset=cooling.earliest_reset(conn, provider, now=now),
        )
    return PoolStatus(providers=providers, keys=listed)


def explain(
    conn: Connection,
    *,
    provider: str,
    now: datetime,
    threshold: float,
    prefer: int | None = None,
    input_tokens: int | None = None,
) -> Explanation:
    found = candidates.candidates(
        conn,
        provider=provider,
        now=now,
        threshold=threshold,
        prefer=prefer,
        input_tokens=input_tokens,
    )
    return Explanation(
        chosen=next((c.id for c in found if c.eligible), None),
        candidates=[CandidatePublic(id=c.id, eligible=c.eligible, reason=c.reason) for c in found],
    )


def bucket_views(conn: Connection, *, now: datetime, provider: str | None) -> list[BucketPublic]:
    """Every bucket whose reset is still ahead, of every key (or one provider's)."""
    query = select(keys_t.c.id)
    if provider is not None:
        query = query.where(keys_t.c.provider == provider)
    ids = list(conn.execute(query).scalars())
    return [
        BucketPublic.model_validate(bucket, from_attributes=True)
        for bucket in limits.limits_of(conn, now=now, key_ids=ids)
    ]
