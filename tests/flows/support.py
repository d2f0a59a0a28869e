"""Types and helpers shared by the flow tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from api.emulator import RunningEmulator
from keystore import Keystore

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
