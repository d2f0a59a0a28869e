"""The files of a keystore: private from the start, whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from keystore import open_keystore
from keystore.settings import Settings
from tests.conftest import secret_for


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
