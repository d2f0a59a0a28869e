"""The pool as a whole: status and the selection explained. Static paths under /keys, so they
are registered before `/keys/{id}` (see routes/__init__.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import KeystoreDep
from api.errors import error_responses
from keystore import Explanation, PoolStatus, Provider

router = APIRouter(prefix="/keys")


@router.get("/status", response_model=PoolStatus)
def pool_status(ks: KeystoreDep) -> PoolStatus:
    """Per provider: how many keys are available, busy, cooling or disabled (unusable keys count
    as disabled) and the earliest reset among cooling keys; then every key."""
    return ks.status()


@router.get("/explain", response_model=Explanation, responses=error_responses(422))
def explain_selection(
    ks: KeystoreDep,
    provider: Annotated[Provider, Query(description="the provider whose keys to explain")],
) -> Explanation:
    """Per key of `provider`, whether a lease could take it now and why not; `chosen` is the key
    the next lease would take (null when none is eligible)."""
    return ks.explain(provider)
