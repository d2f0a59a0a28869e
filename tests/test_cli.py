"""The real `keyrelay` console script, run in a subprocess against a keystore under tmp_path."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.conftest import secret_for
from tests.test_api_support import KEY_FIELDS  # the KeyPublic contract, listed once

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("keyrelay")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "api.cli"]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)


class Cli:
    """Runs `keyrelay ...` and remembers every output, to check no secret ever shows."""

    def __init__(self, home: Path) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("KEYRELAY_")
            and k not in ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_API_KEY", "OPENAI_API_KEY")
        }
        # PYTHONPATH: the repository's packages even when the venv's editable install is stale.
        self.env = env | {
            "KEYRELAY_HOME": str(home),
            "KEYRELAY_MASTER_KEY": Fernet.generate_key().decode(),
            "PYTHONPATH": str(REPO),
            "COLUMNS": "200",
        }
        self.outputs: list[str] = []

    def __call__(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> Result:
        done = subprocess.run(
            [*COMMAND, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env | (env or {}),
            timeout=60,
            check=False,
        )
        self.outputs += [done.stdout, done.stderr]
        return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "home")


def assert_one_error_line(result: Result, *, contains: str) -> None:
    assert result.code != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert contains in lines[0]


def test_keys_lifecycle(cli: Cli) -> None:
    first_secret, second_secret = secret_for("cli-a"), secret_for("cli-b")

    added = cli(
        "keys", "add", "--provider", "anthropic", "--name", "team-a", stdin=first_secret + "\n"
    )
    assert added.code == 0, added.stderr
    assert "added key 1 (team-a, anthropic, sk-ant-...TAIL)" in added.stdout

    second = cli(
        "keys", "add", "--provider", "anthropic", "--name", "team-b", "--priority", "5",
        "--max-concurrency", "2", "--group", "org", "--json", stdin=second_secret,
    )  # fmt: skip
    body = second.json()
    assert isinstance(body, dict)
    assert set(body) == KEY_FIELDS
    assert (body["id"], body["priority"], body["max_concurrency"], body["group"]) == (
        2,
        5,
        2,
        "org",
    )

    table = cli("keys", "list")
    assert table.code == 0
    assert "team-a" in table.stdout and "team-b" in table.stdout
    assert "sk-ant-...TAIL" in table.stdout
    listed = cli("keys", "list", "--json").json()
    assert isinstance(listed, list)
    assert [k["name"] for k in listed] == ["team-b", "team-a"]  # priority order
    assert cli("keys", "list", "--provider", "openai", "--json").json() == []

    status = cli("keys", "status", "--json").json()
    assert isinstance(status, dict)
    assert status["providers"]["anthropic"]["available"] == 2

    explained = cli("keys", "explain", "anthropic", "--json").json()
    assert isinstance(explained, dict)
    assert explained["chosen"] == 2

    updated = cli("keys", "update", "2", "--name", "renamed", "--disable", "--group", "", "--json")
    assert updated.code == 0, updated.stderr
    changed = updated.json()
    assert isinstance(changed, dict)
    assert (changed["name"], changed["enabled"], changed["group"]) == ("renamed", False, None)
    new_secret = secret_for("cli-new")
    rotated = cli("keys", "update", "1", "--secret-from-stdin", "--json", stdin=new_secret).json()
    assert isinstance(rotated, dict)
    assert rotated["fingerprint"] != listed[1]["fingerprint"]

    refused = cli("keys", "rm", "1")
    assert_one_error_line(refused, contains="last enabled anthropic key")
    assert cli("keys", "rm", "2").code == 0
    assert_one_error_line(cli("keys", "rm", "2"), contains="no key with id 2")
    assert cli("keys", "reset", "1", "--json").code == 0
    assert cli("keys", "rm", "1", "--force").stdout.strip() == "deleted key 1"
    assert cli("keys", "list", "--json").json() == []

    everything = "\n".join(cli.outputs)
    for secret in (first_secret, second_secret, new_secret):
        assert secret not in everything
        assert secret[:16] not in everything


def test_secret_input_problems_are_one_line(cli: Cli) -> None:
    assert_one_error_line(
        cli("keys", "add", "--provider", "openai", "--name", "x", stdin=""),
        contains="no secret on stdin",
    )
    secret = secret_for("bad-provider")
    bad = cli("keys", "add", "--provider", "gemini", "--name", "x", stdin=secret)
    assert_one_error_line(bad, contains="provider")
    assert secret not in bad.stdout + bad.stderr
    assert_one_error_line(cli("keys", "list", "--provider", "gemini"), contains="unknown provider")
    assert_one_error_line(cli("keys", "rm", "abc"), contains="ID")
    usage = cli("keys", "lst")
    assert usage.code == 2
    assert_one_error_line(usage, contains="No such command 'lst'")


def test_config_show_and_set(cli: Cli) -> None:
    shown = cli("config", "show", "--json").json()
    assert isinstance(shown, dict)
    assert shown["auto_wait"] is True

    changed = cli(
        "config", "set", "max_wait_s=600", "auto_wait=no", "fallback_enabled=1",
        "fallback_provider=anthropic", "--json",
    ).json()  # fmt: skip
    assert isinstance(changed, dict)
    assert (changed["max_wait_s"], changed["auto_wait"], changed["fallback_enabled"]) == (
        600,
        False,
        True,
    )
    assert changed["fallback_provider"] == "anthropic"
    assert "max_wait_s" in cli("config", "show").stdout

    unknown = cli("config", "set", "max_wait=5")
    assert_one_error_line(unknown, contains="unknown config key 'max_wait'")
    assert "known: auto_wait, max_wait_s" in unknown.stderr
    assert_one_error_line(cli("config", "set", "auto_wait=maybe"), contains="auto_wait")
    assert_one_error_line(cli("config", "set", "max_wait_s=soon"), contains="a number")
    assert_one_error_line(cli("config", "set", "max_wait_s=-5"), contains="max_wait_s")
    assert_one_error_line(cli("config", "set", "max_wait_s"), contains="KEY=VALUE")
    assert cli("config", "show", "--json").json() == changed


def test_audit_list_and_verify(cli: Cli, tmp_path: Path) -> None:
    cli("keys", "add", "--provider", "openai", "--name", "a", stdin=secret_for("audit"))
    events = cli("audit", "list", "--json").json()
    assert isinstance(events, list)
    assert [e["type"] for e in events] == ["key_added"]
    assert cli("audit", "list", "--key", "99", "--type", "key_added", "--json").json() == []

    intact = cli("audit", "verify")
    assert intact.code == 0
    assert "intact (1 rows)" in intact.stdout

    with sqlite3.connect(tmp_path / "home" / "keystore.db") as db:
        db.execute('UPDATE audit_events SET details = \'{"name": "forged"}\'')
    broken = cli("audit", "verify", "--json")
    assert broken.code == 1
    report = broken.json()
    assert isinstance(report, dict)
    assert (report["ok"], report["first_bad_id"]) == (False, 1)


def test_migrate_master_key_and_db(cli: Cli) -> None:
    token = secret_for("env")
    imported = cli("keys", "migrate", "--json", env={"OPENAI_API_KEY": token}).json()
    assert isinstance(imported, list)
    assert [(k["name"], k["provider"]) for k in imported] == [("env:OPENAI_API_KEY", "openai")]
    assert cli("keys", "migrate", "--json", env={"OPENAI_API_KEY": token}).json() == []

    generated = cli("master-key", "generate").stdout.strip()
    Fernet(generated.encode())  # a valid key
    rotated = cli("master-key", "rotate")
    assert rotated.code == 0
    assert "re-encrypted 1 key(s)" in rotated.stdout
    assert "is at revision" in cli("db", "upgrade").stdout
    assert token not in "\n".join(cli.outputs)


def test_api_refuses_to_start_without_a_token(cli: Cli) -> None:
    assert_one_error_line(cli("api", "--port", "0"), contains="KEYRELAY_API_TOKEN is not set")


def test_cli_imports_no_prefect_and_defers_the_keystore(cli: Cli) -> None:
    probe = (
        "import sys\n"
        "import api.cli\n"
        "loaded = {m for m in ('prefect', 'keystore', 'fastapi', 'uvicorn') if m in sys.modules}\n"
        "code = api.cli.main(['keys', 'list', '--json'])\n"
        "print(sorted(loaded), code, 'prefect' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=cli.env,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[] 0 False"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(
    cli: Cli, log: Path, *args: str, env: dict[str, str], probe: str
) -> Iterator[httpx.Client]:
    """Start `keyrelay <args> --port N` and yield a client once `probe` answers."""
    port = _free_port()
    with (
        log.open("w") as output,
        subprocess.Popen(
            [*COMMAND, *args, "--host", "127.0.0.1", "--port", str(port)],
            env=cli.env | env,
            stdout=output,
            stderr=subprocess.STDOUT,
        ) as server,
    ):
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        http.get(probe)
                        break
                    except httpx.TransportError:
                        if server.poll() is not None or time.monotonic() > deadline:
                            raise AssertionError(log.read_text()) from None
                        time.sleep(0.1)
                yield http
        finally:
            server.terminate()
            server.wait(timeout=20)


def test_api_serves_the_app(cli: Cli, tmp_path: Path) -> None:
    token = "cli-served-token"
    log = tmp_path / "api.log"
    for http in _serve(cli, log, "api", env={"KEYRELAY_API_TOKEN": token}, probe="/healthz"):
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/keys").status_code == 401
        authorized = http.get("/keys", headers={"Authorization": f"Bearer {token}"})
        assert (authorized.status_code, authorized.json()) == (200, [])
    assert "GET /keys" in log.read_text()
    assert token not in log.read_text()


def test_emulate_serves_the_emulator(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "emulator.json"
    config.write_text(json.dumps({"log_capacity": 5}))
    log = tmp_path / "emulator.log"
    for http in _serve(
        cli, log, "emulate", "--config", str(config), env={}, probe="/_admin/config"
    ):
        assert http.get("/_admin/config").json()["log_capacity"] == 5


def test_keys_status_watch_refreshes_until_interrupted(cli: Cli) -> None:
    cli("keys", "add", "--provider", "openai", "--name", "first", stdin=secret_for("first"))
    watching = subprocess.Popen(
        [*COMMAND, "keys", "status", "--watch", "--interval", "0.5"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as in a terminal: a job started in the background (CI under `cmd &`) inherits SIGINT
        # ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        time.sleep(4)  # the first table is up (the keystore import takes a while)
        cli("keys", "add", "--provider", "openai", "--name", "second", stdin=secret_for("second"))
        time.sleep(2)  # a refresh or more later
    finally:
        watching.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = watching.communicate(timeout=30)
    assert watching.returncode == 0, err
    assert "first" in out and "second" in out  # the table was redrawn with the new key
    assert cli("keys", "status", "--watch", "--json").code != 0
