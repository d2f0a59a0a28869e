"""Bad configuration through the real `keyrelay` console script: each fault is one `error: ...`
line naming what to fix, and nothing is created behind its back."""

from __future__ import annotations

from pathlib import Path

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
