"""The pool as a whole: status and the selection explained. Static paths under /keys, so they
are registered before `/keys/{id}` (see routes/__init__.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import KeystoreDep
from api.errors import error_responses
from keystore import BucketPublic, Explanation, PoolStatus, Provider

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
    input_tokens: Annotated[
        int | None, Query(ge=0, le=10_000_000, description="the request's estimated input tokens")
    ] = None,
) -> Explanation:
    """Per key of `provider`, whether a lease could take it now and why not (with what its limit
    buckets have left); `chosen` is the key the next lease would take (null when none is
    eligible) for a request of `input_tokens`."""
    return ks.explain(provider, input_tokens=input_tokens)


@router.get("/limits", response_model=list[BucketPublic], responses=error_responses(422))
def key_limits(
    ks: KeystoreDep,
    provider: Annotated[Provider | None, Query(description="only this provider's keys")] = None,
) -> list[BucketPublic]:
    """What each key's provider last said about its limits (requests, tokens, input and output
    tokens; subscription windows' utilization), while it holds: until each bucket's reset."""
    return ks.limits(provider)
