"""Bad configuration through the real `keyrelay` console script: each fault is one `error: ...`
line naming what to fix, and nothing is created behind its back."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import secret_for
from tests.test_cli import Cli, Result, _serve, assert_one_error_line


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


def _add(cli: Cli, name: str, provider: str = "anthropic") -> Result:
    added = cli("keys", "add", "--provider", provider, "--name", name, stdin=secret_for(name))
    assert added.code == 0, added.stderr
    return added


def test_a_deleted_master_key_file_is_an_error_not_a_new_key(cli: Cli, tmp_path: Path) -> None:
    del cli.env["KEYRELAY_MASTER_KEY"]  # the key file under KEYRELAY_HOME
    _add(cli, "a")
    key_file = tmp_path / "home" / "master.key"
    key_file.unlink()
    assert_one_error_line(
        cli("keys", "list"),
        contains=f"error: keys exist but {key_file} is missing; restore it or set "
        "KEYRELAY_MASTER_KEY",
    )
    added = cli("keys", "add", "--provider", "openai", "--name", "b", stdin=secret_for("b"))
    assert_one_error_line(added, contains="is missing")
    assert not key_file.exists()


def test_a_deleted_truncated_or_foreign_keystore_is_an_error(cli: Cli, tmp_path: Path) -> None:
    _add(cli, "a")
    database = tmp_path / "home" / "keystore.db"
    database.unlink()
    missing = cli("keys", "list")
    assert_one_error_line(missing, contains=f"error: the keystore {database} is missing")
    assert "run `keyrelay db init` to start a new, empty keystore" in missing.stderr
    assert not database.exists()

    for content, problem in (
        (b"", "is empty (0 bytes)"),
        (b"x" * 4096, "is not a SQLite database"),
    ):
        database.write_bytes(content)
        assert_one_error_line(cli("keys", "list"), contains=f"the keystore {database} {problem}")
        assert_one_error_line(cli("db", "init"), contains=f"{database} already exists")
        assert database.read_bytes() == content
    database.unlink()

    created = cli("db", "init")
    assert created.code == 0, created.stderr
    assert f"created a new, empty keystore at sqlite:///{database}" in created.stdout
    assert cli("keys", "list", "--json").json() == []


def test_a_keystore_deleted_under_the_running_api(cli: Cli, tmp_path: Path) -> None:
    token = "bad-config-token"
    auth = {"Authorization": f"Bearer {token}"}
    database = tmp_path / "home" / "keystore.db"
    key = {"name": "a", "provider": "openai", "secret": secret_for("api")}
    lost = {"name": "lost", "provider": "openai", "secret": secret_for("lost")}
    for http in _serve(
        cli, tmp_path / "api.log", "api", env={"KEYRELAY_API_TOKEN": token}, probe="/healthz"
    ):
        assert http.post("/keys", json=key, headers=auth).status_code == 201
        database.unlink()
        refused = http.post("/keys", json=lost, headers=auth)
        assert (refused.status_code, refused.json()) == (
            500,
            {"detail": "internal error; see the server log"},
        )
        assert http.get("/keys", headers=auth).status_code == 500
        assert_one_error_line(cli("keys", "list"), contains=f"the keystore {database} is missing")
        assert not database.exists()
    assert "KeystoreMissing on POST /keys" in (tmp_path / "api.log").read_text()


def test_a_locked_keystore_is_a_clear_error_within_the_bound(cli: Cli, tmp_path: Path) -> None:
    _add(cli, "a")
    holder = sqlite3.connect(tmp_path / "home" / "keystore.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        locked = cli(
            "keys",
            "add",
            "--provider",
            "openai",
            "--name",
            "b",
            stdin=secret_for("b"),
            env={"KEYRELAY_SQLITE_BUSY_TIMEOUT_S": "1"},
        )
        took_s = time.monotonic() - started
        listed = cli("keys", "list", "--json")  # reading is not blocked
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_one_error_line(
        locked,
        contains=f"the keystore {tmp_path / 'home' / 'keystore.db'} is locked: another process "
        "held its write lock for more than 1 s (KEYRELAY_SQLITE_BUSY_TIMEOUT_S)",
    )
    assert took_s < 10, took_s  # the CLI's start-up plus the 1 s bound, not 30 s
    assert isinstance(listed.json(), list)


def test_the_api_answers_while_a_writer_is_locked_out(cli: Cli, tmp_path: Path) -> None:
    token = "locked-token"
    auth = {"Authorization": f"Bearer {token}"}
    _add(cli, "a", provider="openai")
    env = {"KEYRELAY_API_TOKEN": token, "KEYRELAY_SQLITE_BUSY_TIMEOUT_S": "0.5"}
    for http in _serve(cli, tmp_path / "api.log", "api", env=env, probe="/healthz"):
        holder = sqlite3.connect(tmp_path / "home" / "keystore.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            refused = http.post(
                "/keys",
                json={"name": "b", "provider": "openai", "secret": secret_for("b")},
                headers=auth,
                timeout=httpx.Timeout(30),
            )
            took_s = time.monotonic() - started
            assert http.get("/keys", headers=auth).status_code == 200
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert refused.status_code == 500 and took_s < 5, (refused.status_code, took_s)
    assert "KeystoreLocked on POST /keys" in (tmp_path / "api.log").read_text()
