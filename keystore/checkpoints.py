"""Run checkpoints: what a resumed run needs (its conversation, the CLI session), one JSON row per
run, so any worker can resume it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from keystore.models import Checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]

_table = Checkpoint.__table__  # type: ignore[attr-defined]


def save_checkpoint(conn: Connection, run_id: str, data: dict[str, Any], *, now: datetime) -> None:
    updated = conn.execute(
        _table.update().where(_table.c.run_id == run_id).values(data=data, updated_at=now)
    ).rowcount
    if not updated:
        conn.execute(_table.insert().values(run_id=run_id, data=data, updated_at=now))


def load_checkpoint(conn: Connection, run_id: str) -> dict[str, Any] | None:
    data: dict[str, Any] | None = conn.execute(
        select(_table.c.data).where(_table.c.run_id == run_id)
    ).scalar_one_or_none()
    return data
