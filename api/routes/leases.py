"""Leases out right now and who holds them. A static path under /keys, so it is registered
before `/keys/{id}` (see routes/__init__.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import KeystoreDep
from api.errors import error_responses
from keystore import Provider
from keystore.holders import LeaseHolderPublic

router = APIRouter(prefix="/keys")


@router.get("/leases", response_model=list[LeaseHolderPublic], responses=error_responses(422))
def list_active_leases(
    ks: KeystoreDep,
    provider: Annotated[Provider | None, Query(description="only this provider's leases")] = None,
) -> list[LeaseHolderPublic]:
    """Every unexpired lease: its key (id, name, provider), its holder and when it was taken and
    expires, ordered by provider, key, oldest first. keyrelay's own runs hold keys as
    `flow-run <flow run id> turn <n>`. A lease whose holder died counts until it expires."""
    return ks.active_leases(provider)
