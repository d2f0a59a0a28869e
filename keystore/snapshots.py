"""Working-directory snapshots, stored per run (the archive is made and unpacked by the flows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select

from keystore.models import WorkdirSnapshot
from keystore.types import as_utc

__all__ = ["Snapshot", "delete_snapshot", "load_snapshot", "save_snapshot"]

_table = WorkdirSnapshot.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Snapshot:
    archive: bytes
    size_bytes: int
    files: int
    taken_at: datetime


def save_snapshot(conn: Connection, run_id: str, snapshot: Snapshot) -> None:
    conn.execute(_table.delete().where(_table.c.run_id == run_id))
    conn.execute(
        _table.insert().values(
            run_id=run_id,
            archive=snapshot.archive,
            size_bytes=snapshot.size_bytes,
            files=snapshot.files,
            taken_at=snapshot.taken_at,
        )
    )


def load_snapshot(conn: Connection, run_id: str) -> Snapshot | None:
    row = conn.execute(
        select(_table.c.archive, _table.c.size_bytes, _table.c.files, _table.c.taken_at).where(
            _table.c.run_id == run_id
        )
    ).one_or_none()
    if row is None:
        return None
    taken_at = as_utc(row.taken_at)
    assert taken_at is not None
    return Snapshot(bytes(row.archive), row.size_bytes, row.files, taken_at)


def delete_snapshot(conn: Connection, run_id: str) -> None:
    conn.execute(_table.delete().where(_table.c.run_id == run_id))
