"""The audit log: append-only, hash-chained rows of what happened to keys and runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import ID_MAX, KeystoreDep
from api.errors import error_responses
from api.schemas import PRINTABLE_PATTERN
from keystore import AuditEventPublic

router = APIRouter(tags=["audit"])

MAX_AUDIT_LIMIT = 10_000  # the keystore's bound (Keystore.audit_events)


@router.get("/audit", response_model=list[AuditEventPublic], responses=error_responses(422))
def list_audit_events(
    ks: KeystoreDep,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_LIMIT, description="at most this many")] = 100,
    key_id: Annotated[
        int | None, Query(ge=-ID_MAX - 1, le=ID_MAX, description="only this key's")
    ] = None,
    run_id: Annotated[
        str | None, Query(max_length=200, pattern=PRINTABLE_PATTERN, description="only this run's")
    ] = None,
    type: Annotated[
        str | None,
        Query(
            max_length=40,
            pattern=PRINTABLE_PATTERN,
            description="only this type (key_added, key_rate_limited, pool_waiting, ...)",
        ),
    ] = None,
) -> list[AuditEventPublic]:
    """Audit events, newest first."""
    return ks.audit_events(limit=limit, key_id=key_id, run_id=run_id, type=type)
