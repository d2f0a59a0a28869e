"""A SQLite keystore as a file: where it is, what lies next to it, whether it is still the
database a connection opened, creating it, and what SQLite's errors about it mean.

Files around `keystore.db`: `-wal` and `-shm` (SQLite's, present while connections are open),
`-writelock` (the writer queue, db.py) and `keystore.migrate.lock` (upgrades and creation). They
outlive the database file, so when it is missing they show that one existed.

Decisions:
- a first keystore is created silently, 0600, with its WAL header written under the
  .migrate.lock, so a concurrent opener never sees it empty;
- a missing file where traces of one remain, an empty (0 bytes) file and a file that is not a
  SQLite database are errors that name the path and say how to proceed, never re-initialised:
  `keyrelay db init` starts a new keystore on purpose, only where there is no file;
- a file deleted, replaced or emptied under a running process is an error at its next
  transaction (an unlinked SQLite file keeps working for whoever has it open, so a key added
  through the API after a `rm` would be written where nobody will read it again);
- SQLite's "database is locked" (past the busy timeout), "readonly database", "unable to open"
  and "malformed" become KeystoreUnavailable errors naming the path."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy.engine import make_url

from keystore.errors import (
    KeyrelayError,
    KeystoreCorrupt,
    KeystoreExists,
    KeystoreLocked,
    KeystoreMissing,
    KeystoreReadOnly,
    KeystoreUnavailable,
)
from keystore.private_files import (
    create_private_file,
    make_private_dir,
    open_private_lock,
    tighten,
)

__all__ = [
    "check_same_file",
    "file_error",
    "file_identity",
    "file_lock",
    "locked_error",
    "migration_lock_path",
    "prepare_file",
    "sqlite_path",
]

_SQLITE_HEADER = b"SQLite format 3\x00"
ADVICE_NEW = "or move it aside and run `keyrelay db init` to start a new, empty keystore"


def sqlite_path(url: str) -> Path | None:
    """The file of a file-backed SQLite URL; None for PostgreSQL and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def companions(path: Path) -> list[Path]:
    """The files SQLite and keyrelay keep next to a keystore file."""
    return [
        Path(f"{path}-wal"),
        Path(f"{path}-shm"),
        Path(f"{path}-writelock"),
        migration_lock_path(path),
    ]


def migration_lock_path(path: Path) -> Path:
    return path.with_suffix(".migrate.lock")


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    fd = open_private_lock(lock_path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def check_same_file(path: Path, opened: tuple[int, int] | None) -> None:
    """The file at `path` is still the one this connection opened, and not emptied."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeystoreMissing(
            f"the keystore {path} was deleted while this process had it open (what it wrote "
            "since then is in a file nobody can open any more); restore the file and restart "
            "this process",
            location=str(path),
        ) from None
    if opened is not None and (st.st_dev, st.st_ino) != opened:
        raise KeystoreMissing(
            f"the keystore {path} was replaced by another file while this process had it open; "
            "restart this process to use the new one",
            location=str(path),
        )
    if st.st_size == 0:
        raise KeystoreCorrupt(
            f"the keystore {path} was emptied (0 bytes) while this process had it open; "
            "restore it from a backup and restart this process",
            location=str(path),
        )


def locked_error(path: Path | None, busy_timeout_s: float) -> KeystoreLocked:
    where = str(path) if path is not None else "in memory"
    return KeystoreLocked(
        f"the keystore {where} is locked: another process held its write lock for more than "
        f"{busy_timeout_s:g} s (KEYRELAY_SQLITE_BUSY_TIMEOUT_S), e.g. a sqlite3 shell or a "
        f"database browser with an open transaction, or a stopped process; `fuser {where}` "
        "lists the processes that have it open",
        location=where,
    )


def file_error(
    exc: BaseException, path: Path | None, busy_timeout_s: float
) -> KeyrelayError | None:
    """The keystore error a SQLite failure about the file (not the statement) means, or None."""
    if path is None or not isinstance(exc, sqlite3.Error):
        return None
    name = getattr(exc, "sqlite_errorname", "") or ""
    text_ = str(exc)
    where = str(path)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text_:
        return locked_error(path, busy_timeout_s)
    if name.startswith("SQLITE_READONLY") or "readonly database" in text_:
        return KeystoreReadOnly(
            f"the keystore {where} cannot be written ({text_}); check the permissions of the "
            f"file, of its -wal and -shm files and of {path.parent}, and that the file system "
            "is mounted read-write",
            location=where,
        )
    if name.startswith("SQLITE_CANTOPEN") or "unable to open database file" in text_:
        if not path.exists():
            return KeystoreMissing(
                f"the keystore {where} is gone (deleted while this process was using it?); "
                "restore the file and restart this process",
                location=where,
            )
        return KeystoreUnavailable(
            f"cannot open the keystore {where} ({text_}); check the permissions of the file "
            f"and of {path.parent}",
            location=where,
        )
    if name in ("SQLITE_NOTADB",) or name.startswith("SQLITE_CORRUPT") or "malformed" in text_:
        return KeystoreCorrupt(
            f"the keystore {where} is damaged ({text_}); restore it from a backup, {ADVICE_NEW}",
            location=where,
        )
    return None


def _file_state(path: Path) -> str:
    """One of "ok" (a SQLite database), "missing", "empty" or "foreign" (anything else)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return "missing"
    if not header:
        return "empty"
    return "ok" if header == _SQLITE_HEADER else "foreign"


def prepare_file(path: Path, *, traces: Sequence[Path], deliberate: bool) -> None:
    """Make sure `path` holds a SQLite database before an engine opens it: create a first one
    (0600, WAL header written, so a concurrent opener never sees it empty), refuse to re-create
    one that existed, refuse an empty or foreign file. Serialized with other openers and with
    migrations on the .migrate.lock file."""
    if not deliberate and _file_state(path) == "ok":
        _tighten_files(path)
        return
    # Looked at before taking the lock, which creates one of them.
    left = [p for p in (*companions(path), *traces) if p.exists()]
    make_private_dir(path.parent)
    with file_lock(migration_lock_path(path)):
        state = _file_state(path)
        if deliberate and state != "missing":
            what = {"ok": "", "empty": " (empty, 0 bytes)", "foreign": " (not a SQLite database)"}
            raise KeystoreExists(
                f"{path} already exists{what[state]}; `keyrelay db init` only creates a keystore "
                "where there is none (move it aside first if you mean to start afresh)",
                location=str(path),
            )
        if state == "missing":
            wal = Path(f"{path}-wal")
            if deliberate and wal.exists() and wal.stat().st_size:
                raise KeystoreExists(
                    f"{wal} exists and may hold the last writes of the keystore that was at "
                    f"{path}; move it aside (with {path}-shm) before `keyrelay db init`",
                    location=str(path),
                )
            if left and not deliberate:
                shown = ", ".join(str(p) for p in left)
                raise KeystoreMissing(
                    f"the keystore {path} is missing, but one existed there ({shown} remain); "
                    "restore the file (a new, empty keystore would not have its keys), or run "
                    "`keyrelay db init` to start a new, empty keystore",
                    location=str(path),
                )
            create_private_file(path)
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute("PRAGMA journal_mode=WAL")  # writes the header page
        elif state == "empty":
            raise KeystoreCorrupt(
                f"the keystore {path} is empty (0 bytes): it was truncated, or its creation was "
                f"interrupted; restore it from a backup, {ADVICE_NEW}",
                location=str(path),
            )
        elif state == "foreign":
            raise KeystoreCorrupt(
                f"the keystore {path} is not a SQLite database; restore it from a backup, "
                f"{ADVICE_NEW}",
                location=str(path),
            )
    _tighten_files(path)


def _tighten_files(path: Path) -> None:
    for file in (path, *companions(path)):
        tighten(file)
