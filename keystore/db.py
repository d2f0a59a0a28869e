"""Engine and transactions. SQLite (WAL, busy timeout, BEGIN IMMEDIATE) by default, PostgreSQL by
URL. The schema is owned by Alembic: `upgrade()` runs at open, never `create_all`.

Opening a keystore (checks, a first creation, never a silent re-creation) is opening.py; the
SQLite file itself is sqlite_file.py. An engine made with `must_exist` (every engine opening.py
makes) never creates the file (SQLite opens it `mode=rw`) and checks at each transaction that the
file at the path is still the one it opened. SQLite failures about the file rather than the
statement (locked past the busy timeout, read-only, gone, damaged) become KeystoreUnavailable
errors naming the path. Every file is created 0600 and every directory 0700 (private_files.py).

`Database` is how the keystore talks to it: read transactions, write transactions that carry an
audit writer, and single autocommitted statements for the lease hot path. All three retry what is
worth retrying (a dropped connection, a deadlock or serialization failure) with bounded backoff,
in one place (`_retrying`)."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from keystore.audit import AuditEventPublic, AuditWriter
from keystore.errors import KeystoreReadOnly, KeystoreUnreachable
from keystore.private_files import create_private_file, make_private_dir, open_private_lock
from keystore.sqlite_file import (
    check_same_file,
    file_error,
    file_identity,
    file_lock,
    locked_error,
    migration_lock_path,
    sqlite_path,
)

__all__ = [
    "BUSY_TIMEOUT_S",
    "Database",
    "connect_read",
    "create_keystore_engine",
    "normalize_url",
    "transaction",
    "upgrade",
]

T = TypeVar("T")
log = logging.getLogger(__name__)
# deadlock detected, serialization failure; the server is shutting down, crashed, or starting up
# (57P01 is what pg_terminate_backend and a restart send to every session)
_RETRYABLE_SQLSTATES = {"40P01", "40001", "57P01", "57P02", "57P03"}
# Waits before each retry of a transient failure, 11.9 s in all. Enough for a PostgreSQL restart
# (1-3 s here, docs/benchmarks.md) or a quick failover; short enough that a caller with a deadline
# (an HTTP client, a step's lease TTL) hears KeystoreUnreachable instead of hanging. No single wait
# is over 2 s, so a worker notices the server is back within 2 s instead of sleeping through it.
RETRY_DELAYS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0)

_MIGRATIONS = Path(__file__).with_name("migrations")
# The longest a SQLite writer waits for the write lock before KeystoreLocked (the writer queue's
# file lock and SQLite's busy timeout together). A keystore transaction holds the lock for about a
# millisecond, and 32 processes hammering one file wait under 0.1 s at p99 (docs/benchmarks.md),
# so 10 s is two orders of magnitude of headroom; a lock held that long is someone else's (a
# sqlite3 shell or a database browser with an open transaction, a stopped process), and the
# caller hears about it with the path instead of a raw "database is locked" after 30 s.
BUSY_TIMEOUT_S = 10.0
_PG_MIGRATION_LOCK = 0x6B657972  # "keyr": advisory lock id serializing concurrent upgrades


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 here."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_keystore_engine(
    url: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S, must_exist: bool = False, **kwargs: Any
) -> Engine:
    """An engine on `url`. SQLite: a missing file is created (0600) unless `must_exist`, in which
    case the engine never creates one (`open_database` decides that, once, with the checks)."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url, busy_timeout_s=busy_timeout_s, must_exist=must_exist, **kwargs)
    # No pre-ping: it costs a round trip per transaction on the hot path. Dropped connections are
    # recycled and a transaction that hits one is retried by the keystore.
    kwargs.setdefault("pool_recycle", 1800)
    # Flows call the keystore from anyio's worker threads (40 at most): keep as many connections
    # open as a busy process uses, so it does not open and close one per call beyond the pool.
    kwargs.setdefault("pool_size", 16)
    kwargs.setdefault("max_overflow", 24)
    return create_engine(url, **kwargs)


class _WriterWait(threading.local):
    """How long this thread's current writer waited in the queue (read by the BEGIN below)."""

    waited_s = 0.0


_writer_wait = _WriterWait()


def _sqlite_engine(url: str, *, busy_timeout_s: float, must_exist: bool, **kwargs: Any) -> Engine:
    path = sqlite_path(url)
    if path is not None and not must_exist and not path.exists():
        make_private_dir(path.parent)
        create_private_file(path)  # before SQLite creates it with the umask's 0644
    busy_ms = max(1, round(busy_timeout_s * 1000))
    engine = create_engine(
        url,
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
        **kwargs,
    )

    if path is not None and must_exist:

        @event.listens_for(engine, "do_connect")
        def _open_existing(_dialect: Any, _record: Any, cargs: list[Any], cparams: Any) -> None:
            # mode=rw: a file deleted under us is an error, never a new empty keystore.
            cargs[:] = [f"file:{quote(str(path))}?mode=rw"]
            cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        record.info["keyrelay_busy_ms"] = busy_ms
        if path is not None:
            record.info["keyrelay_file"] = file_identity(path)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        info = conn.connection.info
        if path is not None:
            check_same_file(path, info.get("keyrelay_file"))
        # Writers take the write lock up front, so two of them never both read "a free slot" and
        # then race to take it; readers use a plain deferred BEGIN and never block writers (WAL).
        if conn.get_execution_options().get("keyrelay_readonly"):
            conn.exec_driver_sql("BEGIN")
            return
        # The writer queue's wait counts against the busy timeout: writers queued behind one
        # that waits out a foreign lock give up with it instead of each waiting it out in turn.
        left_ms = busy_ms - round(_writer_wait.waited_s * 1000)
        if left_ms <= 0:
            raise locked_error(path, busy_timeout_s)
        want_ms = busy_ms if left_ms > busy_ms - 50 else left_ms
        if info.get("keyrelay_busy_ms") != want_ms:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={want_ms}")
            info["keyrelay_busy_ms"] = want_ms
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        error = file_error(context.original_exception, path, busy_timeout_s)
        if error is not None:
            raise error

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
    while the lock is free; a kernel file lock wakes the next writer the moment it is released.
    The time spent here is taken off the writer's busy timeout (see `_sqlite_engine`)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    try:
        fd = open_private_lock(f"{database}-writelock")
    except PermissionError as exc:
        raise KeystoreReadOnly(
            f"cannot create {database}-writelock next to the keystore ({exc.strerror}); check "
            f"the permissions of {Path(database).parent}",
            location=database,
        ) from None
    try:
        started = time.monotonic()
        fcntl.flock(fd, fcntl.LOCK_EX)
        _writer_wait.waited_s = time.monotonic() - started
        try:
            yield
        finally:
            _writer_wait.waited_s = 0.0
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


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
    with connect_read(engine) as conn:
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
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is None:
        yield
        return
    with file_lock(migration_lock_path(path)):
        yield


def _transient(exc: DBAPIError, dialect: str) -> bool:
    """A failure that a fresh attempt may not meet: the connection died (a server restart, a
    dropped socket), PostgreSQL could not be reached or is shutting down / starting up, or it
    chose this transaction as a deadlock or serialization victim. Everything else (a constraint, a
    locked SQLite file after its busy timeout) is the caller's to see at once."""
    if exc.connection_invalidated:
        return True
    if dialect != "postgresql":
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    if sqlstate in _RETRYABLE_SQLSTATES or sqlstate.startswith("08"):  # 08: connection exception
        return True
    # psycopg's OperationalError without a SQLSTATE: it could not connect (refused, reset).
    return isinstance(exc, OperationalError) and not sqlstate


def _retrying(
    attempt: Callable[[], T],
    *,
    what: str,
    dialect: str,
    sleep: Callable[[float], None],
    delays_s: Sequence[float] = RETRY_DELAYS_S,
    location: str = "the keystore database",
) -> T:
    """Run `attempt`, again after each delay while it fails transiently. A transient failure that
    outlasts the delays is KeystoreUnreachable (the driver's text stays in the chained cause: it
    may carry statement parameters)."""
    for delay in (*delays_s, None):
        try:
            return attempt()
        except DBAPIError as exc:
            if not _transient(exc, dialect):
                raise
            if delay is None:
                raise KeystoreUnreachable(
                    f"the keystore database {location} could not be reached for "
                    f"{sum(delays_s):.0f} s ({type(exc.orig).__name__}); retry later",
                    location=location,
                ) from exc
            log.warning("keystore %s failed (%s); retrying in %.2f s", what, exc.orig, delay)
            sleep(delay)
    raise AssertionError("unreachable")


class Database:
    """The keystore's database: one engine (and, on PostgreSQL, a second one whose commits do not
    wait for the WAL flush, for writes whose loss is harmless: see `transaction`)."""

    def __init__(
        self,
        engine: Engine,
        *,
        sleep: Callable[[float], None] = time.sleep,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        self.engine = engine
        self._relaxed: Engine | None = None
        self._sleep = sleep
        self._delays_s = tuple(retry_delays_s)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def read(self, body: Callable[[Connection], T]) -> T:
        def attempt() -> T:
            with connect_read(self.engine) as conn:
                return body(conn)

        return self._retrying(attempt, "read")

    def write(
        self,
        body: Callable[[AuditWriter], T],
        *,
        now: Callable[[], datetime],
        durable: bool = True,
    ) -> tuple[T, list[AuditEventPublic]]:
        """Run `body` in one write transaction; returns its result and the audit rows it wrote
        (for the hooks to see once they are committed).

        A transaction retried after its connection died may already have committed (the COMMIT
        reached the server, its answer did not reach us). Every keystore write that changes
        state writes an audit row, and the chain's hash makes that row unique: when the last
        attempt's rows are there, its result stands and the body does not run again (twice
        would mean two audit rows, a DuplicateKey for a key just added, a KeyNotFound for one
        just deleted). A body that wrote no row simply runs again (its writes are upserts)."""
        ran: tuple[T, AuditWriter] | None = None  # the last attempt whose body finished

        def attempt() -> tuple[T, list[AuditEventPublic]]:
            nonlocal ran
            with transaction(self.engine, durable=durable) as conn:
                if ran is not None and ran[1].landed(conn):
                    return ran[0], ran[1].written
                writer = AuditWriter(conn, now())
                result = body(writer)
                ran = (result, writer)
            return result, writer.written

        return self._retrying(attempt, "write")

    def statement(
        self,
        body: Callable[[Connection], T],
        *,
        durable: bool = True,
        already_applied: Callable[[Connection], T | None] | None = None,
    ) -> T:
        """Run `body`, which issues exactly ONE write statement, in the cheapest safe way.

        PostgreSQL: on an autocommit connection (no BEGIN/COMMIT round trips: the statement is
        its own transaction); `durable=False` uses connections whose commits do not wait for the
        WAL flush. SQLite: a normal write transaction.

        A statement retried after its connection died may already have been applied (the commit
        reached the server, its answer did not reach us). Before each retry `already_applied`,
        when given, looks for the first attempt's effect and returns its result (None: not
        applied, run `body` again); without it the statement must be safe to apply twice."""
        attempts = itertools.count()

        def run(conn: Connection) -> T:
            if next(attempts) and already_applied is not None:
                done = already_applied(conn)
                if done is not None:
                    return done
            return body(conn)

        if self.dialect != "postgresql":

            def in_transaction() -> T:
                with transaction(self.engine, durable=durable) as conn:
                    return run(conn)

            return self._retrying(in_transaction, "statement")
        engine = self.engine if durable else self._relaxed_engine()

        def autocommitted() -> T:
            with engine.connect() as conn:
                return run(conn.execution_options(isolation_level="AUTOCOMMIT"))

        return self._retrying(autocommitted, "statement")

    def _retrying(self, attempt: Callable[[], T], what: str) -> T:
        return _retrying(
            attempt,
            what=what,
            dialect=self.dialect,
            sleep=self._sleep,
            delays_s=self._delays_s,
            location=self.location,
        )

    @property
    def location(self) -> str:
        """The database, for messages: its file, or its URL without the password."""
        url = self.engine.url
        if self.dialect == "sqlite":
            return url.database or ":memory:"
        return url.render_as_string(hide_password=True)

    def _relaxed_engine(self) -> Engine:
        if self._relaxed is None:
            url = self.engine.url
            given = url.query.get("options")
            given = " ".join(given) if isinstance(given, tuple) else given
            options = " ".join(filter(None, [given, "-c synchronous_commit=off"]))
            relaxed = url.update_query_dict({"options": options})  # keeps e.g. a search_path
            self._relaxed = create_keystore_engine(relaxed.render_as_string(hide_password=False))
        return self._relaxed

    def close(self) -> None:
        self.engine.dispose()
        if self._relaxed is not None:
            self._relaxed.dispose()
