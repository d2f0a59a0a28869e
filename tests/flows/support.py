"""Types and helpers shared by the flow tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from prefect.client.schemas.objects import FlowRun

from api.emulator import RunningEmulator
from keystore import Keystore

ROOT = Path(__file__).resolve().parents[2]
SECRETS: set[str] = set()  # every secret a flow test put in a keystore (see test_secrets_scan)


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    database: Path  # the test server's SQLite file: runs, states, logs, events, artifacts


@dataclass
class FlowEnv:
    store: Keystore
    env: dict[str, str]  # what a worker / serve process needs in its environment
    emulator: RunningEmulator
    home: Path


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def add_key(env: FlowEnv, name: str, provider: str = "anthropic", **fields: object) -> int:
    """A key whose secret starts with a prefix the emulator's rules can target:
    `sk-ant-api03-<name>-` (anthropic), `sk-proj-<name>-` (openai)."""
    prefix = f"sk-proj-{name}-" if provider == "openai" else f"sk-ant-api03-{name}-"
    secret = prefix + uuid.uuid4().hex + "SECRET"
    SECRETS.add(secret)
    key = env.store.add_key(name=name, provider=provider, secret=secret, **fields)  # type: ignore[arg-type]
    return key.id


@contextlib.contextmanager
def serving(
    env: FlowEnv,
    log: Path,
    command: tuple[str, ...] = ("-m", "deployments.serve", "--limit", "2"),
    ready: str = "agent-run/default",
    **settings: str,
) -> Iterator[ServeProcess]:
    """A `python <command>` child serving deployments against the test server (by default
    `-m deployments.serve --limit 2`, what `keyrelay serve` runs), with the flow environment plus
    `settings`; yielded once its log names the `ready` deployment, stopped on exit, SIGTERM
    first."""
    from prefect.settings import PREFECT_HOME

    child = {
        **os.environ,
        **env.env,
        "PREFECT_HOME": str(PREFECT_HOME.value()),
        "PYTHONPATH": str(ROOT),
        **settings,
    }
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env=child,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    served = ServeProcess(process, log)
    try:
        deadline = time.monotonic() + 60
        while ready not in served.output():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start:\n{served.output()}")
            time.sleep(0.2)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_for_run(
    run_id: uuid.UUID, done: Callable[[FlowRun], bool], timeout_s: float, what: str
) -> FlowRun:
    """The flow run once `done` says so; an AssertionError naming `what`, the run's state and
    its message after `timeout_s`."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(run_id)
            if done(run):
                return run
            if time.monotonic() > deadline:
                message = run.state.message if run.state else None
                raise AssertionError(f"{what}: run is {run.state_type} {run.state_name}: {message}")
            await anyio.sleep(0.2)


def database_text(path: Path) -> str:
    """Every row of every table of a SQLite database as text, for secret scans."""
    chunks: list[str] = []
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                chunks.append(" ".join(repr(v) for v in row))
    return "\n".join(chunks)


def files_text(root: Path) -> str:
    """Every file under `root` as text (bytes kept as latin-1), for secret scans."""
    return "\n".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file())
