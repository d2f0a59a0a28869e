"""Read-only views of the pool: per-provider counts (`status`) and why each key is or is not
eligible right now (`explain`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Connection

from keystore import cooling, keys, leases
from keystore.models import PROVIDERS, KeyPublic

__all__ = ["CandidatePublic", "Explanation", "PoolStatus", "ProviderStatus", "explain", "status"]


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
    conn: Connection, *, provider: str, now: datetime, threshold: float, prefer: int | None = None
) -> Explanation:
    found = leases.candidates(conn, provider=provider, now=now, threshold=threshold, prefer=prefer)
    return Explanation(
        chosen=next((c.id for c in found if c.eligible), None),
        candidates=[CandidatePublic(id=c.id, eligible=c.eligible, reason=c.reason) for c in found],
    )
