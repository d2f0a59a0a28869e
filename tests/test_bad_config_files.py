"""A keystore that is missing, empty, damaged, locked or read-only, and a missing master key file:
clear errors naming the file, never a silent new keystore or key. Real SQLite files throughout;
PostgreSQL where the fault is not about a file."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from keystore import KeyrelayError, MasterKeyError, open_keystore
from keystore.db import head_revision
from keystore.errors import (
    KeystoreCorrupt,
    KeystoreExists,
    KeystoreLocked,
    KeystoreMissing,
    KeystoreReadOnly,
)
from keystore.opening import init_database
from keystore.settings import Settings
from tests.conftest import PG_URL, secret_for

REPO = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _home_with_a_key(home: Path) -> Path:
    """A keystore under `home` that holds one key, as `keyrelay keys add` leaves it."""
    store = open_keystore(settings=Settings(home=home))
    store.add_key(name="k", provider="openai", secret=secret_for("k"))
    store.close()
    return home / "keystore.db"


# -- first use --------------------------------------------------------------------------------


def test_first_use_creates_everything_private_and_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "new" / "home"
    old_umask = os.umask(0)  # the most generous umask: what keyrelay creates stays private
    try:
        store = open_keystore(settings=Settings(home=home))
        store.add_key(name="k", provider="openai", secret=secret_for("k"))
        with store.engine.connect() as conn:  # keeps the -wal and -shm in place for a look
            conn.exec_driver_sql("SELECT 1")
            created = {p.name: _mode(p) for p in home.iterdir()}
        store.close()
    finally:
        os.umask(old_umask)
    assert created == {
        "keystore.db": 0o600,
        "keystore.db-wal": 0o600,
        "keystore.db-shm": 0o600,
        "keystore.db-writelock": 0o600,
        "keystore.migrate.lock": 0o600,
        "master.key": 0o600,
    }
    assert _mode(home) == 0o700 and _mode(home.parent) == 0o700
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_an_existing_keystore_readable_by_others_is_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = _home_with_a_key(tmp_path)
    database.chmod(0o644)  # as keyrelay created it before
    with caplog.at_level(logging.WARNING):
        open_keystore(settings=Settings(home=tmp_path)).close()
    assert _mode(database) == 0o600
    assert [r.getMessage() for r in caplog.records] == [
        f"{database} was readable by group or others (mode 644); changed to 600"
    ]


# -- missing, empty, damaged --------------------------------------------------------------------


def test_a_deleted_keystore_is_an_error_and_nothing_is_recreated(tmp_path: Path) -> None:
    database = _home_with_a_key(tmp_path)
    database.unlink()
    with pytest.raises(KeystoreMissing) as missing:
        open_keystore(settings=Settings(home=tmp_path))
    assert missing.value.location == str(database)
    assert str(missing.value).startswith(f"the keystore {database} is missing, but one existed")
    assert "run `keyrelay db init` to start a new, empty keystore" in str(missing.value)
    assert not database.exists()


def test_the_master_key_file_alone_shows_the_keystore_existed(tmp_path: Path) -> None:
    database = _home_with_a_key(tmp_path)
    for leftover in tmp_path.glob("keystore.*"):
        leftover.unlink()  # `rm keystore.*`: only master.key is left
    with pytest.raises(KeystoreMissing, match=str(tmp_path / "master.key")):
        open_keystore(settings=Settings(home=tmp_path))
    assert not database.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty (0 bytes)"),
        (b"this is not a database at all, just text\n" * 10, "is not a SQLite database"),
    ],
)
def test_an_empty_or_foreign_file_is_an_error(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    database = _home_with_a_key(tmp_path)
    database.write_bytes(content)
    with pytest.raises(KeystoreCorrupt) as corrupt:
        open_keystore(settings=Settings(home=tmp_path))
    assert str(corrupt.value).startswith(f"the keystore {database} {expected}")
    assert database.read_bytes() == content  # left for whoever recovers it


def test_a_damaged_database_is_an_error_naming_it(tmp_path: Path) -> None:
    database = _home_with_a_key(tmp_path)
    with database.open("r+b") as handle:  # keep the header, wreck the pages after it
        handle.seek(100)
        handle.write(os.urandom(8000))
    with pytest.raises(KeystoreCorrupt, match=f"the keystore {database} is damaged"):
        store = open_keystore(settings=Settings(home=tmp_path))
        store.list_keys()


def test_a_schema_revision_without_its_tables_is_an_error(tmp_path: Path) -> None:
    database = _home_with_a_key(tmp_path)
    with sqlite3.connect(database) as db:
        db.execute("DROP TABLE lease_slots")
        db.execute("DROP TABLE keys")
    with pytest.raises(KeystoreCorrupt) as corrupt:
        open_keystore(settings=Settings(home=tmp_path))
    assert str(corrupt.value).startswith(
        f"the keystore {database} is at schema revision {head_revision()} but its tables keys, "
        "lease_slots are missing"
    )


@pytest.fixture
def pg_fresh_schema() -> Iterator[str]:
    """An empty PostgreSQL schema of its own (this test drops tables in it)."""
    try:
        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with admin.begin() as conn:
            schema = f"kr_bad_{uuid.uuid4().hex[:8]}"
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        if os.environ.get("KEYRELAY_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"PostgreSQL not reachable: {type(exc).__name__}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.mark.postgres
def test_postgres_a_dropped_table_is_an_error_and_init_refuses(
    pg_fresh_schema: str, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, master_key=Fernet.generate_key().decode())
    store = open_keystore(pg_fresh_schema, settings=settings)  # a first keystore: created
    store.add_key(name="k", provider="openai", secret=secret_for("pg"))
    store.close()
    with pytest.raises(KeystoreExists, match="a keystore already exists at postgresql"):
        init_database(pg_fresh_schema)
    engine = create_engine(pg_fresh_schema)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE lease_slots, keys CASCADE"))
    engine.dispose()
    with pytest.raises(KeystoreCorrupt, match="its tables keys, lease_slots are missing"):
        open_keystore(pg_fresh_schema, settings=settings)


def test_db_init_creates_on_purpose_and_only_where_nothing_is(tmp_path: Path) -> None:
    database = _home_with_a_key(tmp_path)
    url = f"sqlite:///{database}"
    with pytest.raises(KeystoreExists, match=f"{database} already exists"):
        init_database(url)
    database.unlink()
    assert init_database(url) == head_revision()
    assert _mode(database) == 0o600
    store = open_keystore(settings=Settings(home=tmp_path))  # the old master.key is reused
    assert store.list_keys() == []
    store.close()


def test_db_init_refuses_a_leftover_wal(tmp_path: Path) -> None:
    database = tmp_path / "keystore.db"
    Path(f"{database}-wal").write_bytes(b"x" * 100)  # the old keystore's last writes, maybe
    with pytest.raises(KeystoreExists, match="-wal exists and may hold the last writes"):
        init_database(f"sqlite:///{database}")
    assert not database.exists()


def test_a_keystore_deleted_under_a_running_process_is_an_error_there(tmp_path: Path) -> None:
    database = _home_with_a_key(tmp_path)
    running = open_keystore(settings=Settings(home=tmp_path))  # e.g. `keyrelay api`
    assert len(running.list_keys()) == 1
    database.unlink()
    with pytest.raises(KeystoreMissing, match="was deleted while this process had it open"):
        running.add_key(name="lost", provider="openai", secret=secret_for("lost"))
    with pytest.raises(KeystoreMissing):
        running.list_keys()
    assert not database.exists()  # and it did not create a new one either
    running.close()


def test_a_keystore_replaced_or_emptied_under_a_running_process(tmp_path: Path) -> None:
    database = _home_with_a_key(tmp_path)
    running = open_keystore(settings=Settings(home=tmp_path))
    running.list_keys()
    database.write_bytes(b"")  # truncated in place
    with pytest.raises(KeystoreCorrupt, match="was emptied"):
        running.list_keys()
    database.unlink()
    database.write_bytes(b"")  # another file at the path
    with pytest.raises(KeystoreMissing, match="was replaced"):
        running.list_keys()
    running.close()


# -- the master key file --------------------------------------------------------------------------


def test_a_missing_key_file_with_keys_present_is_an_error(tmp_path: Path) -> None:
    _home_with_a_key(tmp_path)
    key_file = tmp_path / "master.key"
    key_file.unlink()
    with pytest.raises(MasterKeyError) as missing:
        open_keystore(settings=Settings(home=tmp_path))
    assert str(missing.value) == (
        f"keys exist but {key_file} is missing; restore it or set KEYRELAY_MASTER_KEY "
        "(a new master key would not decrypt them)"
    )
    assert not key_file.exists()


def test_a_missing_key_file_for_an_empty_keystore_is_created(tmp_path: Path) -> None:
    store = open_keystore(settings=Settings(home=tmp_path))
    store.close()
    (tmp_path / "master.key").unlink()
    open_keystore(settings=Settings(home=tmp_path)).close()  # nothing to lose: a new key
    assert _mode(tmp_path / "master.key") == 0o600


def test_master_key_file_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "secrets" / "keyrelay.key"
    monkeypatch.setenv("KEYRELAY_MASTER_KEY_FILE", str(key_file))
    monkeypatch.delenv("KEYRELAY_MASTER_KEY", raising=False)
    monkeypatch.setenv("KEYRELAY_HOME", str(tmp_path / "home"))
    with pytest.raises(MasterKeyError) as missing:
        open_keystore()
    assert str(missing.value).startswith(
        f"KEYRELAY_MASTER_KEY_FILE names {key_file}, which does not exist"
    )
    assert not key_file.exists()  # never created: whoever set the path manages the file

    key_file.parent.mkdir()
    key = Fernet.generate_key()
    key_file.write_bytes(key + b"\n")
    key_file.chmod(0o600)
    store = open_keystore()
    secret = secret_for("file")
    store.add_key(name="k", provider="openai", secret=secret)
    assert store.acquire(provider="openai", holder="t").secret() == secret
    store.close()
    assert not (tmp_path / "home" / "master.key").exists()
    assert Settings().master_key_file == key_file  # what the sandbox hides from the agent

    monkeypatch.setenv("KEYRELAY_MASTER_KEY", key.decode())
    with pytest.raises(MasterKeyError, match="are both set; set one of them"):
        open_keystore()


# -- locked and read-only -------------------------------------------------------------------------


def test_a_locked_keystore_is_a_clear_error_within_the_bound(tmp_path: Path) -> None:
    database = _home_with_a_key(tmp_path)
    store = open_keystore(settings=Settings(home=tmp_path, sqlite_busy_timeout_s=0.5))
    holder = sqlite3.connect(database, isolation_level=None)  # a sqlite3 shell mid-transaction
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert len(store.list_keys()) == 1  # readers are not blocked
        outcomes: list[tuple[type[BaseException], float]] = []

        def write(i: int) -> None:
            started = time.monotonic()
            try:
                store.add_key(name=f"w{i}", provider="openai", secret=secret_for(f"w{i}"))
            except KeyrelayError as exc:
                outcomes.append((type(exc), time.monotonic() - started))

        # Four writers queue behind each other: each gives up within the bound, not in turn.
        writers = [threading.Thread(target=write, args=(i,)) for i in range(4)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        assert [kind for kind, _ in outcomes] == [KeystoreLocked] * 4
        assert all(0.4 < waited < 1.5 for _, waited in outcomes), outcomes
        with pytest.raises(KeystoreLocked) as locked:
            store.reset_key(1)
        assert locked.value.location == str(database)
        assert str(locked.value).startswith(
            f"the keystore {database} is locked: another process held its write lock for more "
            "than 0.5 s (KEYRELAY_SQLITE_BUSY_TIMEOUT_S)"
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.add_key(name="after", provider="openai", secret=secret_for("after"))
    assert len(store.list_keys()) == 2
    store.close()


_READ_THEN_WRITE = """
from keystore import KeyrelayError, open_keystore
store = open_keystore()
print(len(store.list_keys()))
try:
    store.add_key(name="x", provider="openai", secret="sk-proj-" + "r" * 40)
except KeyrelayError as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def test_a_read_only_keystore_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    master = Fernet.generate_key().decode()
    store = open_keystore(settings=Settings(home=home, master_key=master))
    store.add_key(name="k", provider="openai", secret=secret_for("ro"))
    store.close()
    database = home / "keystore.db"
    database.chmod(0o400)
    command = [sys.executable, "-c", _READ_THEN_WRITE]
    if os.geteuid() == 0:  # root writes read-only files anyway, unless it drops the capability
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        drop = "--bounding-set=-dac_override,-dac_read_search"
        command = [setpriv, "--inh-caps=-all", drop, "--", *command]
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "KEYRELAY_HOME": str(home),
        "KEYRELAY_MASTER_KEY": master,
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    listed, failure = done.stdout.strip().splitlines()
    assert listed == "1"  # reading still works
    assert failure == (
        f"{KeystoreReadOnly.__name__}: the keystore {database} cannot be written (attempt to "
        f"write a readonly database); check the permissions of the file, of its -wal and -shm "
        f"files and of {home}, and that the file system is mounted read-write"
    )
