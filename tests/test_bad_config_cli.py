"""Bad configuration through the real `keyrelay` console script (and real worker processes):
each fault is one `error: ...` line naming what to fix, and nothing is created behind its back."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.conftest import secret_for
from tests.test_cli import COMMAND, REPO, Cli, Result, _serve, assert_one_error_line

NOT_HERE = (
    "cannot be decrypted here: the master key in use (KEYRELAY_MASTER_KEY) does not decrypt it"
)
_WORKER = """
import sys
from keystore import MasterKeyError, open_keystore
store = open_keystore()
try:
    held = [store.acquire(provider="anthropic", holder=f"w{i}") for i in range(int(sys.argv[1]))]
except MasterKeyError as exc:
    print(f"MasterKeyError: {exc}")
    sys.exit(3)
print(sorted(lease.key_id for lease in held))
"""


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


def _worker(cli: Cli, leases: int, *, master: str | None = None) -> subprocess.CompletedProcess:
    """A worker process acquiring `leases` anthropic keys from the CLI's keystore."""
    env = cli.env | ({"KEYRELAY_MASTER_KEY": master} if master else {})
    return subprocess.run(
        [sys.executable, "-c", _WORKER, str(leases)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _add(cli: Cli, name: str, provider: str = "anthropic") -> Result:
    added = cli("keys", "add", "--provider", provider, "--name", name, stdin=secret_for(name))
    assert added.code == 0, added.stderr
    return added


def test_a_wrong_master_key_is_that_process_s_problem_only(cli: Cli) -> None:
    for name in ("a", "b", "c"):
        _add(cli, name)
    wrong = {"KEYRELAY_MASTER_KEY": Fernet.generate_key().decode()}

    refused = _worker(cli, 1, master=wrong["KEYRELAY_MASTER_KEY"])
    assert (refused.returncode, refused.stdout.strip()) == (
        3,
        "MasterKeyError: the master key in use decrypts none of the 3 keys of provider "
        "anthropic; is KEYRELAY_MASTER_KEY right?",
    )
    listed = cli("keys", "list", "--json", env=wrong).json()
    assert isinstance(listed, list)
    assert [(k["state"], k["cooling_reason"]) for k in listed] == [("unusable", NOT_HERE)] * 3
    explained = cli("keys", "explain", "anthropic", "--json", env=wrong).json()
    assert isinstance(explained, dict)
    assert explained["chosen"] is None
    assert {c["reason"] for c in explained["candidates"]} == {f"unusable: {NOT_HERE}"}
    status = cli("keys", "status", "--json", env=wrong).json()
    assert isinstance(status, dict)
    counts = status["providers"]["anthropic"]
    assert (counts["available"], counts["disabled"]) == (0, 3)

    # Everyone else: untouched rows, every key leasable, nothing to reset.
    right = cli("keys", "list", "--json").json()
    assert isinstance(right, list)
    assert [(k["state"], k["cooling_reason"]) for k in right] == [("available", None)] * 3
    leased = _worker(cli, 3)
    assert (leased.returncode, leased.stdout.strip()) == (0, "[1, 2, 3]"), leased.stderr
    assert cli("audit", "list", "--type", "key_unusable", "--json").json() == []


def test_serve_refuses_a_master_key_that_decrypts_nothing(cli: Cli) -> None:
    _add(cli, "a")
    _add(cli, "b", provider="openai")
    env = {
        "KEYRELAY_MASTER_KEY": Fernet.generate_key().decode(),
        "PREFECT_API_URL": "http://127.0.0.1:9/api",  # never reached: it refuses before
    }
    refused = cli("serve", env=env)
    assert_one_error_line(
        refused,
        contains="the master key in use decrypts none of the 2 keys in the keystore; "
        "is KEYRELAY_MASTER_KEY right?",
    )


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


def test_files_the_cli_creates_are_private(cli: Cli, tmp_path: Path) -> None:
    del cli.env["KEYRELAY_MASTER_KEY"]
    done = subprocess.run(
        [*COMMAND, "keys", "add", "--provider", "openai", "--name", "a"],
        input=secret_for("a"),
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: os.umask(0),  # the most generous umask
    )
    assert done.returncode == 0, done.stderr
    home = tmp_path / "home"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [home, *home.iterdir()]}
    assert modes == {
        "home": 0o700,
        "keystore.db": 0o600,
        "keystore.db-writelock": 0o600,
        "keystore.migrate.lock": 0o600,
        "master.key": 0o600,
    }


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


def _without_prefect_api(cli: Cli, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment with no PREFECT_API_URL and a Prefect home of Prefect's defaults
    (whose active profile would start a temporary server)."""
    env = {k: v for k, v in cli.env.items() if not k.startswith("PREFECT_API")}
    return env | {"PREFECT_HOME": str(tmp_path / "prefect-home")}


def test_serve_and_run_refuse_without_prefect_api_url(cli: Cli, tmp_path: Path) -> None:
    env = _without_prefect_api(cli, tmp_path)
    for args, message in (
        (
            ["serve"],
            "error: PREFECT_API_URL is not set: serving would register the deployment with a "
            "temporary Prefect server",
        ),
        (
            ["run", "hello", "--agent", "anthropic"],
            "error: PREFECT_API_URL is not set: the run would be created on a temporary Prefect "
            "server",
        ),
    ):
        done = subprocess.run(
            [*COMMAND, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        refused = Result(done.returncode, done.stdout, done.stderr)
        assert_one_error_line(refused, contains=message)
        assert "or pass --local-server" in refused.stderr
        assert "temporary server" not in refused.stdout  # none was started
    assert not (tmp_path / "home").exists()  # refused before touching the keystore


def test_serve_local_server_serves_on_purpose(cli: Cli, tmp_path: Path) -> None:
    env = _without_prefect_api(cli, tmp_path) | {"PYTHONPATH": str(REPO)}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        serve = subprocess.Popen(
            [*COMMAND, "serve", "--local-server", "--limit", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while "agent-run/default" not in log.read_text():
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert "temporary server" in log.read_text()


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
