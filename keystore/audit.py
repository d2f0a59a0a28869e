"""Audit log: append-only, hash-chained rows, plus hooks fired after commit (the flows layer hangs
Prefect event emission on them).

Each row's hash covers its content and the previous row's hash, so `verify_chain` detects an edited,
deleted or reordered row. Writers serialize on the chain head: SQLite already holds the write lock,
PostgreSQL takes a transaction-scoped advisory lock."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import Connection, select, text

from keystore.models import AuditEvent, AuditEventPublic

__all__ = [
    "AUDIT_TYPES",
    "AuditHook",
    "AuditType",
    "AuditWriter",
    "ChainReport",
    "list_events",
    "verify_chain",
]

AuditType = Literal[
    "key_added",
    "key_updated",
    "key_deleted",
    "key_reset",
    "key_migrated",
    "key_unusable",
    "key_rate_limited",
    "key_rotated",
    "key_refused_locally",
    "lease_reclaimed",
    "pool_waiting",
    "pool_resumed",
    "pool_exhausted",
    "fallback_started",
    "fallback_ended",
    "master_key_rotated",
]
AUDIT_TYPES: tuple[str, ...] = get_args(AuditType)
AuditHook = Callable[[AuditEventPublic], None]

_GENESIS = "0" * 64
_PG_CHAIN_LOCK = 0x61756474  # "audt"
_table = AuditEvent.__table__  # type: ignore[attr-defined]
log = logging.getLogger(__name__)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _digest(
    prev_hash: str,
    *,
    at: datetime,
    type: str,
    key_id: int | None,
    run_id: str | None,
    details: dict[str, Any],
) -> str:
    body = json.dumps(
        {
            "at": at.isoformat(),
            "type": type,
            "key_id": key_id,
            "run_id": run_id,
            "details": details,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=_json_default,
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


@dataclass
class AuditWriter:
    """Writes audit rows inside one transaction and remembers them for the post-commit hooks."""

    conn: Connection
    now: datetime
    written: list[AuditEventPublic] = field(default_factory=list)
    _head: str | None = None

    def record(
        self,
        type: AuditType,
        *,
        key_id: int | None = None,
        run_id: str | None = None,
        **details: Any,
    ) -> AuditEventPublic:
        if type not in AUDIT_TYPES:
            raise ValueError(f"unknown audit type {type!r}")
        details = json.loads(
            json.dumps(details, default=_json_default)
        )  # what the JSON column will hold
        prev = self._chain_head()
        digest = _digest(
            prev, at=self.now, type=type, key_id=key_id, run_id=run_id, details=details
        )
        row_id = self.conn.execute(
            _table.insert()
            .values(
                at=self.now,
                type=type,
                key_id=key_id,
                run_id=run_id,
                details=details,
                prev_hash=prev,
                hash=digest,
            )
            .returning(_table.c.id)
        ).scalar_one()
        self._head = digest
        event = AuditEventPublic(
            id=row_id, at=self.now, type=type, key_id=key_id, run_id=run_id, details=details
        )
        self.written.append(event)
        return event

    def landed(self, conn: Connection) -> bool | None:
        """Whether this writer's transaction was committed, seen from a later one (`conn`): its
        last row is there with the hash it computed. None when it wrote no row (no way to tell
        from here). For a retry whose first attempt's commit answer was lost."""
        if not self.written or self._head is None:
            return None
        stored = conn.execute(
            select(_table.c.hash).where(_table.c.id == self.written[-1].id)
        ).scalar_one_or_none()
        return stored == self._head

    def _chain_head(self) -> str:
        if self._head is not None:
            return self._head
        if self.conn.dialect.name == "postgresql":
            self.conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_CHAIN_LOCK})
        head = self.conn.execute(
            select(_table.c.hash).order_by(_table.c.id.desc()).limit(1)
        ).scalar_one_or_none()
        return head or _GENESIS


def fire_hooks(hooks: Iterable[AuditHook], events: Iterable[AuditEventPublic]) -> None:
    """A failing hook is logged and skipped: observability must never break the pool."""
    for event in events:
        for hook in hooks:
            try:
                hook(event)
            except Exception:
                log.exception("audit hook %r failed on %s", hook, event.type)


def list_events(
    conn: Connection,
    *,
    limit: int = 100,
    key_id: int | None = None,
    run_id: str | None = None,
    type: str | None = None,
) -> list[AuditEventPublic]:
    query = select(_table).order_by(_table.c.id.desc()).limit(limit)
    if key_id is not None:
        query = query.where(_table.c.key_id == key_id)
    if run_id is not None:
        query = query.where(_table.c.run_id == run_id)
    if type is not None:
        query = query.where(_table.c.type == type)
    return [
        AuditEventPublic(
            id=r.id, at=r.at, type=r.type, key_id=r.key_id, run_id=r.run_id, details=r.details
        )
        for r in conn.execute(query)
    ]


@dataclass(frozen=True)
class ChainReport:
    rows: int
    ok: bool
    first_bad_id: int | None = None
    problem: str | None = None


def verify_chain(conn: Connection, *, batch: int = 5000) -> ChainReport:
    prev = _GENESIS
    count = 0
    last_id = 0
    while True:
        rows = conn.execute(
            select(_table).where(_table.c.id > last_id).order_by(_table.c.id).limit(batch)
        ).all()
        if not rows:
            return ChainReport(rows=count, ok=True)
        for row in rows:
            if row.prev_hash != prev:
                return ChainReport(
                    count, False, row.id, "previous-hash link broken (row missing or reordered)"
                )
            expected = _digest(
                prev,
                at=row.at,
                type=row.type,
                key_id=row.key_id,
                run_id=row.run_id,
                details=row.details,
            )
            if row.hash != expected:
                return ChainReport(
                    count, False, row.id, "content does not match its hash (row edited)"
                )
            prev = row.hash
            count += 1
            last_id = row.id
