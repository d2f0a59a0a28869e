"""Opening a keystore: check it, create a first one, upgrade it; never start afresh by accident.

`open_database` is what `open_keystore` and `keyrelay db upgrade` use: a first keystore is created
silently, one that is missing, empty or damaged where one existed is an error naming it (SQLite:
see sqlite_file.py; every backend: a recorded schema revision whose tables are gone).
`init_database` (`keyrelay db init`) creates a keystore on purpose, where there is none."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url

from keystore.db import (
    BUSY_TIMEOUT_S,
    connect_read,
    create_keystore_engine,
    current_revision,
    normalize_url,
    upgrade,
)
from keystore.errors import KeystoreCorrupt, KeystoreExists
from keystore.sqlite_file import prepare_file, sqlite_path

__all__ = ["holds_keys", "init_database", "open_database", "upgrade_database"]

# Tables every schema revision has: a recorded revision without them is a keystore that lost them.
_CORE_TABLES = frozenset({"keys", "lease_slots", "audit_events", "rotation_config", "checkpoints"})


def _location(url: str) -> str:
    path = sqlite_path(url)
    return str(path) if path is not None else make_url(url).render_as_string(hide_password=True)


def _check_schema(engine: Engine, location: str) -> None:
    """A recorded schema revision whose tables are gone is a damaged keystore, not a new one."""
    with connect_read(engine) as conn:
        tables = set(inspect(conn).get_table_names())
        revision = (
            MigrationContext.configure(conn).get_current_revision()
            if "alembic_version" in tables
            else None
        )
    missing = sorted(_CORE_TABLES - tables)
    if revision is not None and missing:
        raise KeystoreCorrupt(
            f"the keystore {location} is at schema revision {revision} but its tables "
            f"{', '.join(missing)} are missing; restore it from a backup, or remove it and run "
            "`keyrelay db init` to start a new, empty keystore",
            location=location,
        )
    if revision is None and tables & _CORE_TABLES:
        raise KeystoreCorrupt(
            f"{location} has keyrelay tables ({', '.join(sorted(tables & _CORE_TABLES))}) but no "
            "alembic_version table, so its schema revision is unknown; restore it from a backup",
            location=location,
        )


def open_database(
    url: str,
    *,
    migrate: bool = True,
    traces: Sequence[Path] = (),
    busy_timeout_s: float = BUSY_TIMEOUT_S,
) -> Engine:
    """An engine on the keystore at `url`, checked and (by default) at the newest schema.

    A first keystore is created silently; one that is missing, empty or damaged where one existed
    is an error (see the module docstring). `traces`: files whose presence shows that a keystore
    existed at `url` besides its own companions (the master key file of the default home)."""
    url = normalize_url(url)
    path = sqlite_path(url)
    if path is not None:
        prepare_file(path, traces=traces, deliberate=False)
    engine = create_keystore_engine(url, busy_timeout_s=busy_timeout_s, must_exist=True)
    try:
        _check_schema(engine, _location(url))
        if migrate:
            upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def init_database(url: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> str:
    """Create a new, empty keystore at `url` on purpose (`keyrelay db init`), whatever traces of
    an old one remain; KeystoreExists when there is one. Returns its schema revision."""
    url = normalize_url(url)
    path = sqlite_path(url)
    if path is not None:
        prepare_file(path, traces=(), deliberate=True)
    engine = create_keystore_engine(url, busy_timeout_s=busy_timeout_s, must_exist=True)
    try:
        if path is None:
            with connect_read(engine) as conn:
                if "alembic_version" in inspect(conn).get_table_names():
                    location = _location(url)
                    raise KeystoreExists(
                        f"a keystore already exists at {location}; `keyrelay db upgrade` brings "
                        "it to the newest schema",
                        location=location,
                    )
        upgrade(engine)
        revision = current_revision(engine)
    finally:
        engine.dispose()
    assert revision is not None
    return revision


def holds_keys(engine: Engine) -> bool:
    """Whether the keystore holds any key (so a master key exists somewhere for it)."""
    with connect_read(engine) as conn:
        if "keys" not in inspect(conn).get_table_names():
            return False
        return conn.execute(text("SELECT 1 FROM keys LIMIT 1")).first() is not None


def upgrade_database(
    url: str, *, traces: Sequence[Path] = (), busy_timeout_s: float = BUSY_TIMEOUT_S
) -> str:
    """Bring the keystore at `url` to the newest schema; returns the revision it is at."""
    engine = open_database(url, traces=traces, busy_timeout_s=busy_timeout_s)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    assert revision is not None
    return revision
