"""Migrations own the schema; the facade imports without Prefect or FastAPI."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from keystore import Keystore, open_keystore
from keystore.db import create_keystore_engine, current_revision, head_revision
from keystore.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_migrations_match_models(store_url: str) -> None:
    engine = create_keystore_engine(store_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    assert diff == []


def test_times_come_back_aware_utc(ks: Keystore) -> None:
    key = ks.add_key(name="k", provider="openai", secret="sk-proj-" + "q" * 30)
    ks.acquire(provider="openai", holder="t")
    again = ks.get_key(key.id)
    assert (
        isinstance(again.last_used_at, datetime)
        and again.last_used_at.utcoffset().total_seconds() == 0
    )
    assert again.created_at == key.created_at


def test_open_keystore_creates_sqlite_under_home_in_wal_mode(tmp_path: Path) -> None:
    ks = open_keystore(settings=Settings(home=tmp_path))
    assert (tmp_path / "keystore.db").exists() and (tmp_path / "master.key").exists()
    with ks.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000  # the bound
    ks.close()
    open_keystore(settings=Settings(home=tmp_path)).close()  # second open: already at head


def test_facade_imports_without_prefect_or_fastapi() -> None:
    code = (
        "import sys, keystore; keystore.open_keystore; "
        "bad = [m for m in ('prefect', 'fastapi', 'uvicorn') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
