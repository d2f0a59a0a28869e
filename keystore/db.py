"""Engine and transactions. SQLite (WAL, busy timeout, BEGIN IMMEDIATE) by default, PostgreSQL by
URL. The schema is owned by Alembic: `upgrade()` runs at open, never `create_all`."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

__all__ = [
    "connect_read",
    "create_keystore_engine",
    "normalize_url",
    "transaction",
    "upgrade",
    "upgrade_database",
]

_MIGRATIONS = Path(__file__).with_name("migrations")
_SQLITE_BUSY_TIMEOUT_MS = 30_000
_PG_MIGRATION_LOCK = 0x6B657972  # "keyr": advisory lock id serializing concurrent upgrades


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 here."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_keystore_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url, **kwargs)
    # No pre-ping: it costs a round trip per transaction on the hot path. Dropped connections are
    # recycled and a transaction that hits one is retried by the keystore.
    kwargs.setdefault("pool_recycle", 1800)
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    return create_engine(url, **kwargs)


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front, so two of them never both read "a free slot" and
        # then race to take it; readers use a plain deferred BEGIN and never block writers (WAL).
        if conn.get_execution_options().get("keyrelay_readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextlib.contextmanager
def transaction(engine: Engine, *, durable: bool = True) -> Iterator[Connection]:
    """A write transaction: committed on success, rolled back on error.

    `durable=False` lets PostgreSQL acknowledge the commit before its WAL reaches the disk
    (`synchronous_commit = off` for this transaction only). A server crash may then forget the
    last fraction of a second of such commits, so it is only for writes whose loss is harmless:
    a forgotten release leaves the slot held until the lease's TTL, a forgotten renewal is
    redone a third of a TTL later. Under many concurrent clients the WAL flush of every commit
    is what they queue on."""
    with _sqlite_writer_queue(engine), engine.begin() as conn:
        if not durable and conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        yield conn


@contextlib.contextmanager
def _sqlite_writer_queue(engine: Engine) -> Iterator[None]:
    """Queue SQLite writers of all processes on a file lock before BEGIN IMMEDIATE.

    SQLite's own busy handler polls with sleeps of up to 100 ms, so under contention writers nap
    while the lock is free; a kernel file lock wakes the next writer the moment it is released."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}-writelock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def connect_read(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction (on SQLite it does not take the write lock)."""
    with engine.connect() as conn:
        conn = conn.execution_options(keyrelay_readonly=True)
        with conn.begin():
            yield conn


def _alembic_config(conn: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`. Safe when many processes open the keystore at once."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    with _migration_lock(engine), engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).expanduser().with_suffix(".migrate.lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade_database(url: str) -> str:
    """Bring the keystore at `url` to the newest schema; returns the revision it is at."""
    engine = create_keystore_engine(url)
    try:
        upgrade(engine)
        revision = current_revision(engine)
    finally:
        engine.dispose()
    assert revision is not None
    return revision
